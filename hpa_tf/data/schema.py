"""The TFRecord feature schema, defined once: the builder writes with it, the pipelines read with it.

Two record kinds per image, in separate shard sets (``images-*.tfrec``, ``cells-*.tfrec``):

**Image record** (``IMAGE_FEATURES``)
- ``id`` (bytes), ``labels`` (19 x int64 multi-hot), ``height``/``width`` (the original size),
  ``fold`` (int64; -1 since version 3: folds are assigned after the build, over the images that
  were built, in the manifest's ``folds.csv``, which the pipelines read), ``source`` (bytes: the name of the data source the image came from, e.g.
  ``competition`` or ``external``; empty in version-1 records), ``schema_version`` (int64);
- ``image``: PNG, 4 channels in the order red, green, blue, yellow (the file's RGBA), resized to
  ``image_size`` x ``image_size``; lossless;
- ``mask``: 16-bit PNG cell instance mask at the same size (0 = background); ``n_cells``.

**Cell record** (``CELL_FEATURES``): all cells of one image, so a reader can sample from them
- the image's ``id``, ``labels``, ``height``, ``width``, ``fold``, ``source``, ``schema_version``, ``n_cells``;
- ``cells``: one PNG per cell (4 channels, ``cell_size`` x ``cell_size``): the cell's bounding box
  with the pixels of other cells zeroed, padded to a square (aspect kept), then resized;
- ``bbox`` (n x 4 int64: y0, x0, y1, x1 in original pixels), ``area`` (n, original pixels),
  ``border`` (n, 1 if the cell touches the image edge), ``cell_index`` (n, its id in the mask).
"""

from __future__ import annotations

import numpy as np

from hpa_tf.io.png import encode_label_png, encode_png
from hpa_tf.labels import NUM_CLASSES

SCHEMA_VERSION = 3  # 2: the source field; 3: folds in folds.csv, not in the records
UNASSIGNED_FOLD = -1


def _tf():
    import tensorflow as tf

    return tf


def _common_features() -> dict:
    """The fields both record kinds carry."""
    tf = _tf()
    return {
        "id": tf.io.FixedLenFeature([], tf.string),
        "labels": tf.io.FixedLenFeature([NUM_CLASSES], tf.int64),
        "height": tf.io.FixedLenFeature([], tf.int64),
        "width": tf.io.FixedLenFeature([], tf.int64),
        "fold": tf.io.FixedLenFeature([], tf.int64),
        "source": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "schema_version": tf.io.FixedLenFeature([], tf.int64),
        "n_cells": tf.io.FixedLenFeature([], tf.int64),
    }


def image_features() -> dict:
    """The parse spec of an image record. ``tf.io.parse_single_example(x, image_features())``"""
    tf = _tf()
    return {
        **_common_features(),
        "image": tf.io.FixedLenFeature([], tf.string),
        "mask": tf.io.FixedLenFeature([], tf.string),
    }


def cell_features() -> dict:
    """The parse spec of a cell record (variable-length lists are ``VarLenFeature``)."""
    tf = _tf()
    return {
        **_common_features(),
        "cells": tf.io.VarLenFeature(tf.string),
        "bbox": tf.io.VarLenFeature(tf.int64),
        "area": tf.io.VarLenFeature(tf.int64),
        "border": tf.io.VarLenFeature(tf.int64),
        "cell_index": tf.io.VarLenFeature(tf.int64),
    }


def encode_rgby_png(image: np.ndarray) -> bytes:
    """An HxWx4 uint8 (red, green, blue, yellow) as a PNG whose RGBA channels are R, G, B, Y.

    OpenCV writes its arrays as BGRA, hence the swap: ``tf.io.decode_png`` then returns R, G, B, Y.
    """
    return encode_png(np.ascontiguousarray(image[..., [2, 1, 0, 3]]))


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A uint16 instance mask as a 16-bit grey PNG (``tf.io.decode_png(..., dtype=tf.uint16)``)."""
    return encode_label_png(mask)


def _bytes(values: list[bytes]):
    tf = _tf()
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values) -> object:
    tf = _tf()
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _common(image_id: str, labels: np.ndarray, height: int, width: int, fold: int, n_cells: int,
            source: str) -> dict:
    return {
        "id": _bytes([image_id.encode()]),
        "source": _bytes([source.encode()]),
        "labels": _ints(labels),
        "height": _ints([height]),
        "width": _ints([width]),
        "fold": _ints([fold]),
        "schema_version": _ints([SCHEMA_VERSION]),
        "n_cells": _ints([n_cells]),
    }


def image_example(image_id: str, labels: np.ndarray, height: int, width: int, fold: int,
                  image_png: bytes, mask_png: bytes, n_cells: int, source: str = "") -> bytes:
    """A serialized image record."""
    tf = _tf()
    feats = _common(image_id, labels, height, width, fold, n_cells, source)
    feats.update(image=_bytes([image_png]), mask=_bytes([mask_png]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def cell_example(image_id: str, labels: np.ndarray, height: int, width: int, fold: int,
                 crops_png: list[bytes], bbox: np.ndarray, area: np.ndarray, border: np.ndarray,
                 cell_index: np.ndarray, source: str = "") -> bytes:
    """A serialized cell record (all cells of one image)."""
    tf = _tf()
    feats = _common(image_id, labels, height, width, fold, len(crops_png), source)
    feats.update(
        cells=_bytes(crops_png), bbox=_ints(np.asarray(bbox).reshape(-1)), area=_ints(area),
        border=_ints(border), cell_index=_ints(cell_index),
    )
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def record_dataset(files, compression: str = "auto"):
    """A ``tf.data.TFRecordDataset`` of record shards; ``compression="auto"`` tells a ``--compression
    gzip`` build from its first bytes. ``record_dataset(glob("recs/images-*")).map(parse_image_record)``"""
    tf = _tf()
    files = [files] if isinstance(files, str) else list(files)
    if compression == "auto":
        compression = ""
        if files:
            with tf.io.gfile.GFile(files[0], "rb") as f:
                compression = "GZIP" if f.read(2) == b"\x1f\x8b" else ""
    return tf.data.TFRecordDataset(files, compression_type=compression)


def parse_image_record(serialized, dtype=None):
    """Parse and decode one image record in-graph: ``{"id", "labels", "image" (HxWx4 uint8, or
    ``dtype``: ``tf.uint16`` for a ``--bit-depth 16`` record set), "mask" (HxW uint16), "height",
    "width", "fold", "n_cells"}``. Usable in ``tf.data.Dataset.map``."""
    tf = _tf()
    ex = tf.io.parse_single_example(serialized, image_features())
    ex["image"] = tf.io.decode_png(ex["image"], channels=4, dtype=dtype or tf.uint8)
    ex["mask"] = tf.io.decode_png(ex["mask"], channels=1, dtype=tf.uint16)[..., 0]
    return ex


def parse_cell_record(serialized):
    """Parse one cell record in-graph; ``cells`` stays a vector of PNG strings (decode the ones you
    sample), ``bbox`` becomes n x 4."""
    tf = _tf()
    ex = tf.io.parse_single_example(serialized, cell_features())
    for key in ("cells", "bbox", "area", "border", "cell_index"):
        ex[key] = tf.sparse.to_dense(ex[key])
    ex["bbox"] = tf.reshape(ex["bbox"], [-1, 4])
    return ex
