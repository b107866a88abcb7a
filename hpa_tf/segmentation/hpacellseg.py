"""The official HPA segmentation models (CellProfiling's HPA-Cell-Segmentation, the tool the
competition's truth came from), run inside hpa-tf: the networks in Keras, the labelling re-implemented.

    --segmenter hpacellseg:nuclei=/models/dpn_unet_nuclei_v1.pth,cell=/models/dpn_unet_cell_3ch_v1.pth

The two model files come from the official release (nothing is downloaded): PyTorch modules pickled
whole. By default (``backend=keras``) they are read as data, without PyTorch and without running the
pickles, into the Keras network (:mod:`hpa_tf.segmentation.official`), called batched under XLA, one
copy per process; converted copies (``.keras``, ``.weights.h5``) load the same way.
``backend=torch`` runs the files with ``torch.load(path, weights_only=False)`` instead (it needs the
classes of ``haoxusci/pytorch_zoo`` importable, and runs the pickle: only files you trust).
Options after the paths: ``scale=0.25`` (as the official tool), ``device=auto|cpu|cuda|cuda:1|gpu:1``,
``batch=8`` (images per forward pass), ``post=fast|full``, ``backend=keras|torch``, ``xla=1|0``,
``field=N`` (the side the images would have at full resolution; default: 1728 px and larger are
full resolution, smaller images are downsized 2048 px fields).

**Downsized fields.** The official size rules (smallest seed, nucleus and cell, closing radius) are
pixel counts for fields of about 2048 px, and its networks saw nuclei of that size x 0.25. A 512 px
copy of a field (``python -m hpa_tf.download --size 512``, a Kaggle notebook's resized test set) kept
0 of 38 cells under them. Here an image smaller than 1728 px is taken as a downsized 2048 px field:
the networks see it at the resolution they would see the full field (``scale / zoom``, zoom = side /
2048), and the rules shrink with it (lengths by the zoom, areas by its square).

The steps are the official tool's, re-implemented here:

1. **Network inputs**: the blue channel (nuclei model, as three identical channels) and red, yellow,
   blue (cell model), each rescaled by ``scale`` (scikit-image, with anti-aliasing), padded by
   reflection to a multiple of 32 where needed (1728 px images: their issue #16), normalised
   ``(x - mean) * 0.0167 * 255`` with the official means; several images per forward pass.
2. **Outputs**: softmax over three classes (background, border, interior) as 0-255.
3. **Labels** (:func:`label_cells`): nuclei = a watershed of the interior map from seeds where the
   interior is sure and no border is seen, small objects dropped; cells = a watershed of the cell
   model's interior map from the nuclei, small cells dropped, closed, holes filled, grown once more
   into the cell border signal; a nucleus keeps the number of its cell.

``post=full`` labels at the input resolution from the outputs enlarged as the official tool does
(the same steps, OpenCV for the morphology); ``post=fast`` (default) labels at the network's own
resolution, every size rule scaled, and enlarges the labels: the network sees 512 px of a 2048 px
image, so the full-resolution outputs are 4 x 4 blocks of the same values and carry nothing more.
"""

from __future__ import annotations

import importlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, segmentation
from skimage.morphology import disk

from hpa_tf.io.images import to_8bit_view
from hpa_tf.segmentation.base import Segmentation

INSTALL = 'pip install "hpa-tf[hpacellseg]" (PyTorch, CPU or CUDA build)'
MEAN = np.array([124, 117, 104], np.float32) / 255
STD = np.array([1 / (0.0167 * 255)] * 3, np.float32)
# The official rule sizes, in pixels of the input image (their images: 2048 px). An image smaller than
# FULL_RESOLUTION_MIN is taken as a downsized field: the rules and the network input scale with it.
FULL_RESOLUTION_MIN = 1728
NUCLEUS_SEED_MIN, NUCLEUS_HOLE_MAX, MASK_SPECK_MIN = 500, 1000, 8
NUCLEUS_MIN, CELL_MIN, CLOSING_RADIUS = 2500, 5500, 6


def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError as err:
        raise ImportError(f"the 'hpacellseg' segmenter needs PyTorch: {INSTALL}") from err


def load_model(path: str, device: str) -> Any:
    """A model file of the official release (a module pickled whole) on ``device``, in eval mode."""
    from hpa_tf import fs

    torch = _torch()
    if not fs.exists(path):
        raise FileNotFoundError(f"hpacellseg model {path} not found: give the official model files, "
                                "e.g. hpacellseg:nuclei=/models/dpn_unet_nuclei_v1.pth,cell=/models/dpn_unet_cell_3ch_v1.pth")
    local = path
    if "://" in path:  # torch reads local files: copy gs:// models once
        import tempfile

        local = posixpath.join(tempfile.mkdtemp(), posixpath.basename(path))
        with open(local, "wb") as f:
            f.write(fs.read_bytes(path))
    model = torch.load(local, map_location=torch.device(device), weights_only=False)
    if isinstance(model, torch.nn.DataParallel):
        model = model.module
    return model.to(device).eval()


def _small_objects(labels: np.ndarray, min_size: float) -> np.ndarray:
    """Objects (labels, or connected components of a mask) with fewer than ``min_size`` pixels removed."""
    if labels.dtype == bool:
        n, comp, stats, _ = cv2.connectedComponentsWithStats(labels.astype(np.uint8), connectivity=4)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_size
        keep[0] = False
        return keep[comp]
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def _fill_labels(labels: np.ndarray) -> np.ndarray:
    """Cut objects apart along their boundaries, fill the holes of the whole, number the pieces."""
    lab = labels.astype(np.float32)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    boundaries = cv2.dilate(lab, cross) != cv2.erode(lab, cross)
    return ndi.label(ndi.binary_fill_holes((labels > 0) & ~boundaries))[0]


def _eight_connected(mask: np.ndarray) -> np.ndarray:
    return measure.label(mask, connectivity=2)


def label_cells(nuclei_pred: np.ndarray, cell_pred: np.ndarray, pixel_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei and cells from the two networks' outputs (H x W x 3 uint8: background, border,
    interior), as the official tool labels them. ``pixel_scale``: output pixels per input pixel
    (1 at the input resolution, 0.25 at the network's for a 2048 px image); the size rules follow.

    >>> pred = np.zeros((64, 64, 3), np.uint8); pred[16:48, 16:48, 2] = 255
    >>> [int(a.max()) for a in label_cells(pred, pred, pixel_scale=0.1)]
    [1, 1]
    """
    area = pixel_scale**2
    interior, border = nuclei_pred[..., 2] / 255.0, nuclei_pred[..., 1]
    # The official code adds the two border maps as uint8, which wraps above 255: kept, for the same labels.
    no_border = (1 - (border + cell_pred[..., 1]).astype(np.uint8) / 255.0) > 0.05
    seeds = _small_objects(interior * no_border > 0.15, NUCLEUS_SEED_MIN * area)
    mask = interior > 0.4
    mask = ~_small_objects(~mask, NUCLEUS_HOLE_MAX * area)  # small holes filled
    mask = _small_objects(mask, MASK_SPECK_MIN * area)
    markers = ndi.label(seeds, output=np.uint32)[0]
    nuclei = segmentation.watershed(mask.astype(np.uint8), markers, mask=mask, watershed_line=True)
    nuclei = _eight_connected(_small_objects(nuclei, NUCLEUS_MIN * area))

    cell_interior = cell_pred[..., 2]
    threshold = max(0.22, filters.threshold_otsu(cell_interior / 255) * 0.5)
    region = cell_interior / 255 > threshold  # (the official "exclude the border" term keeps everything)
    distance = cell_interior.astype(np.float64)  # the official clip(x, low, x) is x itself: min(max(x, low), x)
    cells = segmentation.watershed(-distance, nuclei, mask=region)
    cells = _small_objects(cells, CELL_MIN * area).astype(np.uint8)  # uint8 as in the official code
    radius = max(int(round(CLOSING_RADIUS * pixel_scale)), 1)
    cells = cv2.morphologyEx(cells, cv2.MORPH_CLOSE, disk(radius).astype(np.uint8))
    cells = _fill_labels(cells)
    grown = (cells > 0) | (cell_pred[..., 1] / 255 > 0.05)
    cells = _fill_labels(segmentation.watershed(-distance, cells, mask=grown))
    cells = _eight_connected(_small_objects(_eight_connected(cells > 0), CELL_MIN * area)).astype(np.uint16)
    inside = _small_objects(_eight_connected((cells > 0) & (nuclei > 0)), NUCLEUS_MIN * area)
    return (cells * (inside > 0)).astype(np.uint16), cells


def _pad32(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    rows, cols = image.shape[:2]
    if rows % 32 == 0 and cols % 32 == 0:
        return image, rows, cols
    return cv2.copyMakeBorder(image, 32, 32 - rows % 32, 32, 32 - cols % 32, cv2.BORDER_REFLECT), rows, cols


@dataclass
class HPACellSegSegmenter:
    """``HPACellSegSegmenter("nuclei.pth", "cell.pth").segment(images)``: the official models, batched.

    ``device="auto"`` uses CUDA when PyTorch sees a GPU. One instance loads the models once; use one
    process for it (the CLI, the builder and ``predict.py`` segment in their main process).
    """

    nuclei_model: str = ""
    cell_model: str = ""
    scale_factor: float = 0.25
    device: str = "auto"
    batch_size: int = 8
    post: str = "fast"  # fast: label at the network's resolution; full: at the input resolution
    field_side: int = 0  # this image's side at the official resolution; 0 = auto (see field_zoom)
    backend: str = "keras"  # keras: the files read as data into the Keras network; torch: torch.load
    xla: bool = True  # keras: compile the networks with XLA (jit_compile)
    name: str = "hpacellseg"
    _models: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.nuclei_model or not self.cell_model:
            raise ValueError("hpacellseg needs both model files: hpacellseg:nuclei=PATH,cell=PATH (nothing is downloaded)")
        if self.post not in ("fast", "full"):
            raise ValueError(f"hpacellseg post must be 'fast' or 'full', not {self.post!r}")
        if self.backend not in ("keras", "torch"):
            raise ValueError(f"hpacellseg backend must be 'keras' or 'torch', not {self.backend!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"hpacellseg batch must be a whole number >= 1, not {self.batch_size!r}")
        if not self.scale_factor > 0:
            raise ValueError(f"hpacellseg scale must be > 0, not {self.scale_factor!r}")

    def field_zoom(self, height: int, width: int) -> float:
        """Image pixels per pixel of the official tool's fields (~2048 px, where its size rules are
        pixel counts): 1 for a full-resolution field (1728, 2048, 3072 px: the competition's own,
        labelled by the official rules as they are); for a smaller image, taken as a downsized copy of
        a 2048 px field, its side / 2048 (a 512 px copy: 0.25). ``field=N`` says the side the image
        would have at full resolution instead.

        >>> HPACellSegSegmenter("n.pth", "c.pth").field_zoom(512, 512), HPACellSegSegmenter("n.pth", "c.pth").field_zoom(1728, 1728)
        (0.25, 1.0)
        """
        side = max(height, width)
        if self.field_side:
            return side / self.field_side
        return 1.0 if side >= FULL_RESOLUTION_MIN else side / 2048

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if _torch().cuda.is_available() else "cpu"

    def _net(self, kind: str) -> Any:
        if kind not in self._models:
            path = self.nuclei_model if kind == "nuclei" else self.cell_model
            if self.backend == "keras":
                from hpa_tf.segmentation.official.runtime import compiled_network

                self._models[kind] = compiled_network(path, self.device, self.xla)  # one per process
            else:
                self._models[kind] = load_model(path, self._device())
        return self._models[kind]

    def _forward(self, kind: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Softmax outputs (H x W x 3 float) of a batch of same-shaped H x W x 3 inputs."""
        batch = np.stack([(x - MEAN) / STD for x in inputs]).astype(np.float32)
        if self.backend == "keras":
            return list(self._net(kind)(batch))
        torch = _torch()
        batch = batch.transpose(0, 3, 1, 2)
        with torch.no_grad():
            out = self._net(kind)(torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self._device()))
            out = torch.softmax(out, dim=1).cpu().numpy()
        return list(out.transpose(0, 2, 3, 1))

    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The two networks' outputs (uint8, at the network's resolution) for each image."""
        from skimage.transform import rescale
        from skimage.util import img_as_ubyte

        prepared = []
        for image in images:
            rgby = to_8bit_view(image)  # 8-bit as is; a dim 16-bit channel stretched to its own range
            # the networks see a field at the official resolution x scale_factor, whatever its size here
            scale = self.scale_factor / self.field_zoom(*image.shape[:2])
            small = rescale(rgby[..., [0, 3, 2]], scale, channel_axis=-1)  # red, yellow, blue in [0, 1]
            cell_in, rows, cols = _pad32(small)
            nuc_in, _, _ = _pad32(np.dstack([small[..., 2]] * 3))
            prepared.append((nuc_in, cell_in, rows, cols))
        out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, (nuc_in, _, _, _) in enumerate(prepared):
            groups.setdefault(nuc_in.shape, []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                nuc = self._forward("nuclei", [prepared[i][0] for i in chunk])
                cell = self._forward("cell", [prepared[i][1] for i in chunk])
                for i, n_p, c_p in zip(chunk, nuc, cell):
                    rows, cols = prepared[i][2], prepared[i][3]
                    crop = (slice(32, 32 + rows), slice(32, 32 + cols)) if n_p.shape[0] != rows else (slice(None),) * 2
                    n_p, c_p = img_as_ubyte(n_p[crop]), img_as_ubyte(c_p[crop])
                    n_p[..., 0] = 0
                    c_p[..., 0] = 0
                    out[i] = (n_p, c_p)
        return [o for o in out if o is not None]

    def segment(self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None) -> list[Segmentation]:
        results = []
        for image, (nuc, cell) in zip(images, self.predict(images)):
            h, w = image.shape[:2]
            zoom = self.field_zoom(h, w)  # the size rules scale with the field: areas by its square
            if self.post == "full":  # enlarged as the official tool does, labelled at full size
                nuc = cv2.resize(nuc, (w, h), interpolation=cv2.INTER_AREA)
                cell = cv2.resize(cell, (w, h), interpolation=cv2.INTER_AREA)
                nuclei, cells = label_cells(nuc, cell, zoom)
            else:
                nuclei, cells = label_cells(nuc, cell, nuc.shape[0] / h * zoom)
                nuclei = cv2.resize(nuclei, (w, h), interpolation=cv2.INTER_NEAREST)
                cells = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)
            results.append(Segmentation(nuclei, cells))
        return results


_KEYS = {"nuclei": "nuclei_model", "cell": "cell_model", "scale": "scale_factor", "device": "device",
         "batch": "batch_size", "post": "post", "backend": "backend", "xla": "xla", "field": "field_side"}


def _whole(value: str) -> int:
    if not value.strip().lstrip("+").isdigit() or int(value) < 1:
        raise ValueError("a whole number >= 1")
    return int(value)


def _positive(value: str) -> float:
    number = float(value)  # ValueError for "abc"
    if not np.isfinite(number) or number <= 0:
        raise ValueError("a number > 0")
    return number


def _flag(value: str) -> bool:
    if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("1 or 0")
    return value.lower() in ("1", "true", "yes", "on")


_CASTS: dict[str, Any] = {"scale": (_positive, "a number > 0"), "batch": (_whole, "a whole number >= 1"),
                          "xla": (_flag, "1 or 0"), "field": (_whole, "a whole number >= 1")}


def parse_spec(spec: str) -> dict[str, Any]:
    """``hpacellseg:nuclei=A,cell=B,scale=0.25`` -> the segmenter's arguments.

    >>> parse_spec("hpacellseg:nuclei=/m/n.pth,cell=/m/c.pth,batch=4")
    {'nuclei_model': '/m/n.pth', 'cell_model': '/m/c.pth', 'batch_size': 4}
    """
    body = spec.split(":", 1)[1] if ":" in spec else ""
    out: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in _KEYS:
            raise ValueError(f"segmenter {spec!r}: {item!r} is not one of {', '.join(k + '=...' for k in _KEYS)}")
        cast, what = _CASTS.get(key, (str, ""))
        try:
            out[_KEYS[key]] = cast(value)
        except ValueError:
            raise ValueError(f"segmenter {spec!r}: {key}={value!r} must be {what}") from None
    return out
