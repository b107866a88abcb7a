"""The CPU half of prediction: read an image, segment it, cut the model inputs, encode the masks.

Everything here is NumPy/OpenCV (no TensorFlow), so it runs in worker processes while the
accelerator scores the previous images. The inputs are cut as the TFRecord builder cut the
training records (:func:`hpa_tf.data.contract.record_views`, at the records' sizes of each model's
input contract); the step to the model's own size happens with the model. The result is small:
the image and its cell mask at each records' image size, the cell crops at each records' cell size,
and every cell's mask already RLE-encoded for the submission (once per cell, whatever the models).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hpa_tf.data.contract import record_views, to_record_depth
from hpa_tf.io import read_image
from hpa_tf.rle import encode_label_image
from hpa_tf.segmentation import Segmentation, cell_segmenter


@dataclass(frozen=True)
class PrepareSpec:
    """What the models need: the records' ``image_sizes`` of the image models and ``cell_sizes`` of
    the cell models (their input contracts)."""

    data_dir: str
    segmenter: str = "classical"
    image_sizes: tuple[int, ...] = ()
    cell_sizes: tuple[int, ...] = ()
    bit_depth: int = 8  # of the models' records (their input contracts)


@dataclass
class Prepared:
    """One image ready for the models. ``cell_ids[i]`` is the id in the mask of row ``i`` everywhere."""

    image_id: str
    width: int = 0
    height: int = 0
    cell_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    masks: list[str] = field(default_factory=list)  # RLE of each cell, in cell_ids order
    images: dict[int, np.ndarray] = field(default_factory=dict)  # size -> (S, S, 4) uint8
    small_masks: dict[int, np.ndarray] = field(default_factory=dict)  # size -> (S, S) uint16
    crops: dict[int, np.ndarray] = field(default_factory=dict)  # size -> (n, C, C, 4) uint8
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def n_cells(self) -> int:
        return int(self.cell_ids.size)


def _tick(timings: dict[str, float], stage: str, start: float) -> float:
    now = time.perf_counter()
    timings[stage] = timings.get(stage, 0.0) + now - start
    return now


def prepare_array(image: np.ndarray, seg: Segmentation, spec: PrepareSpec, image_id: str = "",
                  timings: dict[str, float] | None = None) -> Prepared:
    """Model inputs and encoded masks of an image (H, W, 4 uint8) and its segmentation.

    >>> img = np.zeros((64, 64, 4), np.uint8); cells = np.zeros((64, 64), np.uint16); cells[8:30, 8:30] = 1
    >>> p = prepare_array(img, Segmentation(cells, cells), PrepareSpec("", image_sizes=(32,), cell_sizes=(16,)))
    >>> p.n_cells, p.images[32].shape, p.crops[16].shape
    (1, (32, 32, 4), (1, 16, 16, 4))
    """
    timings = {} if timings is None else timings
    t = time.perf_counter()
    h, w = seg.cells.shape
    out = Prepared(image_id, w, h, timings=timings)
    for size in spec.image_sizes:
        views = record_views(image, seg.cells, size, None)
        out.images[size], out.small_masks[size] = views["image"], views["mask"]
    ids = None
    for size in spec.cell_sizes:
        views = record_views(image, seg.cells, None, size)
        out.crops[size], ids = views["crops"], views["cell_ids"]
    t = _tick(timings, "crop", t)
    encoded = encode_label_image(seg.cells)
    out.cell_ids = np.array(sorted(encoded), np.int64) if ids is None else ids
    out.masks = [encoded[int(i)] for i in out.cell_ids]
    _tick(timings, "encode", t)
    return out


def prepare_image(spec: PrepareSpec, image_id: str) -> Prepared:
    """Read, segment and prepare one image of ``spec.data_dir``; a failure is returned, not raised."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    try:
        image = read_image(spec.data_dir, image_id, dtype="native")  # full precision to the segmenter
        t = _tick(timings, "read", t)
        seg = cell_segmenter(spec.segmenter).segment([image], [image_id])[0]
        _tick(timings, "segment", t)
        return prepare_array(to_record_depth(image, spec.bit_depth), seg, spec, image_id, timings)
    except Exception as err:  # noqa: BLE001 - a bad image gets an empty row, the run goes on
        return Prepared(image_id, timings=timings, error=f"{type(err).__name__}: {err}")
