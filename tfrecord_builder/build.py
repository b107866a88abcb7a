"""The per-image work of the builder: one pure function from an image ID to its two records.

``build_example(config, job)`` reads the image, segments it (or reads its masks), resizes the
image and mask, crops every cell, and serialises an image record and a cell record with
:mod:`hpa_tf.data.schema`. It never raises for a bad image: the result carries the error. The
local runner and the Beam runner both call it, so both produce the same bytes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from hpa_tf.data import schema
from hpa_tf.data.contract import record_views, to_record_depth
from hpa_tf.io import read_image
from hpa_tf.labels import to_multi_hot
from hpa_tf.segmentation import cell_segmenter


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the records' bytes (saved in the manifest). ``sources``: one
    ``(name, image folder, label table)`` per data source, e.g. the competition's and external data."""

    sources: tuple[tuple[str, str, str], ...]
    segmenter: str = "classical"
    image_size: int = 512
    cell_size: int = 128
    shard_mb: float = 150.0
    compression: str = ""  # "" or "GZIP"
    seed: int = 0  # the shard shuffle
    bit_depth: int = 8  # of the stored pixels: 8, or 16 for the full precision of 16-bit files

    def to_dict(self) -> dict:
        out = asdict(self)
        out["sources"] = [list(src) for src in self.sources]  # the JSON form, so a saved config compares equal
        if out["bit_depth"] == 8:
            del out["bit_depth"]  # the default: configs of earlier builds compare equal
        return out

    def data_dir(self, source: str) -> str:
        """The image folder of a source."""
        return next(data for name, data, _ in self.sources if name == source)


@dataclass(frozen=True)
class ImageJob:
    image_id: str
    labels: tuple[int, ...]
    source: str = "main"


@dataclass
class Built:
    """The records of one image, or why there are none."""

    image_id: str
    labels: tuple[int, ...]
    source: str = "main"
    image_record: bytes = b""
    cell_record: bytes = b""
    n_cells: int = 0
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error


def build_example(config: BuildConfig, job: ImageJob) -> Built:
    """Both records of one image.

    >>> build_example(BuildConfig((("main", "synth/train", "synth/train.csv"),)), ImageJob("id", (0,)))  # doctest: +SKIP
    """
    out = Built(job.image_id, job.labels, job.source)
    t = time.perf_counter()
    try:
        image = read_image(config.data_dir(job.source), job.image_id, dtype="native")  # full precision
    except Exception as err:  # a bad file is reported, the build goes on
        out.error = f"read: {err}"
        return out
    t = _tick(out, "read", t)
    try:
        seg = cell_segmenter(config.segmenter).segment([image], [job.image_id])[0]
    except Exception as err:
        out.error = f"segment: {type(err).__name__}: {err}"
        return out
    t = _tick(out, "segment", t)
    if seg.n_cells == 0:
        out.error = f"no cells found by {config.segmenter} in this {image.shape[1]}x{image.shape[0]} image"
        return out
    h, w = image.shape[:2]
    image = to_record_depth(image, config.bit_depth)
    views = record_views(image, seg.cells, config.image_size, config.cell_size)  # what prediction cuts too
    crops = views["crops"]
    t = _tick(out, "resize_crop", t)
    labels = to_multi_hot(list(job.labels), np.int64)
    out.image_record = schema.image_example(
        job.image_id, labels, h, w, schema.UNASSIGNED_FOLD, schema.encode_rgby_png(views["image"]),
        schema.encode_mask_png(views["mask"]), len(crops), job.source,
    )
    out.cell_record = schema.cell_example(
        job.image_id, labels, h, w, schema.UNASSIGNED_FOLD, [schema.encode_rgby_png(c) for c in crops], views["bbox"],
        views["area"], views["border"], views["cell_ids"], job.source,
    )
    out.n_cells = len(crops)
    _tick(out, "encode", t)
    return out


def _tick(out: Built, stage: str, start: float) -> float:
    now = time.perf_counter()
    out.timings[stage] = now - start
    return now
