"""One input contract from records to prediction: the pixels a model saw in training are the pixels
it sees at prediction.

Two steps, each one implementation shared by both sides:

1. :func:`record_views` (NumPy/OpenCV, no TensorFlow): the segmented image shrunk to the records'
   image size (OpenCV area averaging) with its cell mask (nearest), and every cell cut as the
   builder stores it (its bounding box padded to a square about its centre, other cells zeroed,
   area-averaged to the records' cell size). The builder writes these; prediction cuts the same.
2. :func:`to_model_size` (TensorFlow): uint8 -> [0, 1], then bilinear with antialiasing to the
   model's input size when it differs. The tf.data pipelines and the predictor call it (the
   predictor's version compiles with XLA).

:class:`InputContract` records both sizes, the segmenter and the rules; it travels inside the saved
model (an identity layer named ``input_contract``), so ``predict.py`` prepares inputs from it and
refuses a segmenter the model was not trained with (``--force`` overrides).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

import cv2
import numpy as np

from hpa_tf.data.crops import cell_crops

CONTRACT_VERSION = 1
RULES = ("channels red, green, blue, yellow; intensity value / max(dtype) as uint8 (bit_depth 8) or uint16 "
         "(bit_depth 16), then / 255 or / 65535; "
         "image: OpenCV area to the records' size, then bilinear with antialiasing to the model's; cells: bounding "
         "box padded to a square about its centre, other cells zeroed, area to the records' cell size, then bilinear "
         "with antialiasing to the model's")


@dataclass(frozen=True)
class InputContract:
    """What a model's inputs are. ``InputContract.from_config(config)`` when training."""

    kind: str  # image | cells | cell
    image_size: int  # the model's input side (image models)
    cell_size: int  # the model's cell side (cell models)
    record_image_size: int  # the first, OpenCV step
    record_cell_size: int
    segmenter: str  # that made the training masks
    rules: str = RULES
    bit_depth: int = 8  # of the records' pixels: 8, or 16 (``--bit-depth 16``: full precision of 16-bit files)
    version: int = CONTRACT_VERSION

    @classmethod
    def from_config(cls, config) -> InputContract:
        """The contract of a training config: its sizes and the records' (from their manifest)."""
        from hpa_tf.data.pipeline import read_manifest

        built = read_manifest(config["data"]["records"])
        return cls(config["model"]["kind"], int(config["data"]["image_size"]), int(config["data"]["cell_size"]),
                   built.image_size, built.cell_size, built.segmenter, bit_depth=built.bit_depth)

    @classmethod
    def for_model(cls, kind: str, size: int, segmenter: str = "") -> InputContract:
        """A model without a saved contract (built outside ``train_tpu.py``): inputs cut at its own size."""
        return cls(kind, size, size, size, size, segmenter)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> InputContract:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def model_size(self) -> int:
        return self.image_size if self.kind == "image" else self.cell_size

    @property
    def record_size(self) -> int:
        return self.record_image_size if self.kind == "image" else self.record_cell_size

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


def segmenter_kind(spec: str) -> str:
    """``classical``, ``hpacellseg`` or ``precomputed``: what matters when comparing two runs
    (paths differ between machines). ``segmenter_kind("hpacellseg:nuclei=/a")`` -> 'hpacellseg'"""
    return spec.split(":", 1)[0] if spec else ""


def to_record_depth(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """An image (any dtype, read with ``dtype="native"``) as the records' pixels: uint8 (bit depth 8)
    or uint16 (16), by the one rule ``value / max(dtype)``. The builder and prediction both call it.

    >>> to_record_depth(np.array([[1020]], np.uint16), 8).tolist(), to_record_depth(np.array([[4]], np.uint8), 16).tolist()
    ([[4]], [[1028]])
    """
    from hpa_tf.io import to_uint8, to_uint16

    if bit_depth not in (8, 16):
        raise ValueError(f"bit depth must be 8 or 16, not {bit_depth}")
    return to_uint8(image) if bit_depth == 8 else to_uint16(image)


def record_views(image: np.ndarray, cells: np.ndarray, image_size: int | None,
                 cell_size: int | None) -> dict:
    """The builder's view of a segmented (H, W, 4) uint8 image: ``image`` and ``mask`` at
    ``image_size`` (if given) and the cell crops at ``cell_size`` (if given) with their ``bbox``,
    ``area``, ``border`` and ``cell_ids`` (the crops' ids in ``cells``).

    >>> img = np.zeros((64, 64, 4), np.uint8); lab = np.zeros((64, 64), np.uint16); lab[8:30, 8:30] = 1
    >>> v = record_views(img, lab, 32, 16); v["image"].shape, v["crops"].shape, v["cell_ids"].tolist()
    ((32, 32, 4), (1, 16, 16, 4), [1])
    """
    out: dict = {}
    if image_size:
        size = (image_size, image_size)
        out["image"] = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        out["mask"] = cv2.resize(cells, size, interpolation=cv2.INTER_NEAREST)
    if cell_size:
        crops, bbox, area, border, ids = cell_crops(image, cells, cell_size)
        out["crops"] = np.stack(crops) if crops else np.zeros((0, cell_size, cell_size, image.shape[2]), image.dtype)
        out.update(bbox=bbox, area=area, border=border, cell_ids=ids)
    return out


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 weights of a 1-D bilinear resize with antialiasing, half-pixel centres:
    TensorFlow's ``tf.image.resize(..., antialias=True)`` (a triangle kernel widened by the
    downscale factor, weights normalised within the image), as a matrix. Resizing by two matrix
    products compiles everywhere (XLA on a TPU, ``--jit`` on a GPU or CPU) where the
    ``ScaleAndTranslate`` kernel behind ``tf.image.resize(antialias=True)`` has no XLA kernel.

    >>> resize_matrix(4, 2).astype(float).round(3).tolist()  # each output pixel: mostly its two input pixels
    [[0.429, 0.429, 0.143, 0.0], [0.0, 0.143, 0.429, 0.429]]
    """
    inv_scale = n_in / n_out
    support = max(inv_scale, 1.0)  # antialiasing: the kernel spans the input pixels one output pixel covers
    centres = (np.arange(n_out)[:, None] + 0.5) * inv_scale
    weights = np.maximum(0.0, 1.0 - np.abs((np.arange(n_in)[None, :] + 0.5 - centres) / support))
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def to_model_size(x, size: int, compilable: bool = True):
    """uint8, uint16 or float images (..., S, S, C) -> float32 in [0, 1] at ``size`` x ``size``: bilinear
    with antialiasing when the side differs. The training pipelines and the predictor both call it.

    ``compilable`` (the predictor, whose calls XLA may compile): two products with
    :func:`resize_matrix`. Otherwise (tf.data on the host CPU, never compiled) TensorFlow's
    ``tf.image.resize(antialias=True)``, the same filter, 1.57x faster on a CPU for 512 -> 384 px
    (``python -m benchmarks --only resize``);
    the two differ by at most 3e-5 (under 1/100 of an 8-bit step; tested).

    >>> to_model_size(np.full((2, 8, 8, 4), 255, np.uint8), 3).shape
    TensorShape([2, 3, 3, 4])
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    scale = {tf.uint8: 255.0, tf.uint16: 65535.0}.get(x.dtype)
    x = tf.cast(x, tf.float32) / scale if scale else tf.cast(x, tf.float32)
    if x.shape[-2] == size and x.shape[-3] == size:
        return x
    if compilable:
        rows = tf.constant(resize_matrix(int(x.shape[-3]), size))
        cols = tf.constant(resize_matrix(int(x.shape[-2]), size))
        # Separable: rows, then columns; any leading axes (a batch, bags of cells) ride along.
        return tf.einsum("ij,...jkc,lk->...ilc", rows, x, cols)
    if x.shape.rank <= 4:
        return tf.image.resize(x, [size, size], antialias=True)
    lead = tf.shape(x)[:-3]  # bags of cells (B, N, S, S, C): resize them as one batch
    flat = tf.reshape(x, tf.concat([[-1], tf.shape(x)[-3:]], 0))
    out = tf.image.resize(flat, [size, size], antialias=True)
    return tf.reshape(out, tf.concat([lead, [size, size, x.shape[-1]]], 0))
