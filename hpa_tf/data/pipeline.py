"""tf.data input pipelines over the builder's shards: image batches and cell bags.

Training: file-level shuffle, parallel interleave, parallel parse, shuffle buffer, ``repeat()``,
static shapes (``drop_remainder=True``), prefetch, ``deterministic=False`` unless asked.
Evaluation: one pass in file order. Fold selection uses the ``fold`` feature the builder stored
(``folds.csv`` in the manifest says the same); with ``data.val_sources`` only those sources'
images of the validation fold validate, and the other sources' images of that fold train (the usual
practice with external data). Under a ``tf.distribute`` strategy use
:func:`distribute`, which batches per replica through ``distribute_datasets_from_function``.

Elements:
- image pipeline: ``(image (S, S, 4) float32 in [0, 1], labels (19,) float32)``;
- cell bags: ``({"cells": (N, C, C, 4), "mask": (N,)}, {"cells": (N, 19), "image": (19,)},
  {"cells": mask, "image": 1.0})`` - the third part is the per-output sample weight, so padded
  cells never count in the cell loss. Training samples N = ``cells_per_bag`` cells per image
  (padding when an image has fewer); evaluation takes the first ``max_eval_cells`` in order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import tensorflow as tf

from hpa_tf import fs
from hpa_tf.data import augment
from hpa_tf.data.schema import cell_features, image_features
from hpa_tf.labels import NUM_CLASSES

AUTOTUNE = tf.data.AUTOTUNE


def read_manifest(records: str) -> dict:
    """The builder's ``manifest.json``, with a clear error when it is missing."""
    path = fs.join(records, "manifest.json")
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} not found: build records first with `python -m tfrecord_builder build ...`")
    return json.loads(fs.read_text(path))


def shard_files(records: str, kind: str) -> tuple[list[str], str]:
    """Shard paths of ``kind`` ("images" or "cells") and their compression."""
    m = read_manifest(records)
    return [fs.join(records, f["file"]) for f in m["shards"][kind]], m["config"]["compression"]


def count_images(records: str, folds: Sequence[int] | None = None, sources: Sequence[str] | None = None) -> int:
    """How many images the given folds hold (all folds when None), counting only ``sources`` if given.

    >>> count_images("records", [0], sources=["competition"])  # doctest: +SKIP
    4361
    """
    manifest = read_manifest(records)
    if sources:
        per_source = manifest.get("sources", {})
        unknown = sorted(set(sources) - set(per_source))
        if unknown:
            raise ValueError(f"data.val_sources: {records} has no source {unknown}; it has {sorted(per_source)}")
        per_fold: dict[str, int] = {}
        for name in sources:
            for f, n in per_source[name]["images_per_fold"].items():
                per_fold[f] = per_fold.get(f, 0) + n
    else:
        per_fold = manifest["folds"]["images_per_fold"]
    return sum(n for f, n in per_fold.items() if folds is None or int(f) in folds)


def _files_dataset(files: list[str], compression: str, training: bool, deterministic: bool, seed: int,
                   input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 16), num_parallel_calls=AUTOTUNE, deterministic=deterministic or not training,
    )


def _selected(ex: dict, folds: Sequence[int] | None, sources: Sequence[str] | None, exclude: bool) -> tf.Tensor:
    """Whether a record is in ``folds`` (any fold when None) and one of ``sources`` (any when empty);
    the opposite with ``exclude`` (no folds: nothing is held out, every record is kept)."""
    if folds is None:
        return tf.constant(True)
    hit = tf.reduce_any(tf.equal(ex["fold"], tf.constant(list(folds), tf.int64)))
    if sources:
        hit = hit & tf.reduce_any(tf.equal(ex["source"], tf.constant(list(sources))))
    return tf.logical_not(hit) if exclude else hit


def _examples(data: dict, kind: str, spec: dict, training: bool, folds: Sequence[int] | None, exclude_folds: bool,
              input_context: tf.distribute.InputContext | None, need_cells: bool = False) -> tf.data.Dataset:
    """Parsed records of ``kind`` in the chosen folds and ``data.val_sources`` (or all others with
    ``exclude_folds``), with cells if asked; shuffled and repeated when training."""
    files, compression = shard_files(data["records"], kind)
    det = bool(data["deterministic"])
    ds = _files_dataset(files, compression, training, det, data["seed"], input_context)
    ds = ds.map(lambda s: tf.io.parse_single_example(s, spec), num_parallel_calls=AUTOTUNE, deterministic=det or not training)
    sources = (data.get("val_sources") or None) if folds is not None else None

    def keep(ex):
        hit = _selected(ex, folds, sources, exclude_folds)
        return hit & (ex["n_cells"] > 0) if need_cells else hit

    ds = ds.filter(keep)
    if training:
        ds = ds.shuffle(data["shuffle_buffer"], seed=data["seed"]).repeat()
    return ds


def _decode_image(ex: dict, size: int, stored: int) -> tf.Tensor:
    image = tf.image.convert_image_dtype(tf.io.decode_png(ex["image"], channels=4), tf.float32)
    if stored != size:  # records at another size than the model's input
        image = tf.image.resize(image, [size, size], antialias=True)
    return tf.ensure_shape(image, [size, size, 4])


def image_dataset(data: dict, aug: dict | None, batch_size: int, training: bool,
                  folds: Sequence[int] | None = None, exclude_folds: bool = False,
                  input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Batches of ``(image, labels)``. ``folds`` keeps (or with ``exclude_folds`` drops) those folds."""
    ds = _examples(data, "images", image_features(), training, folds, exclude_folds, input_context)
    det = bool(data["deterministic"])
    size = data["image_size"]
    stored = read_manifest(data["records"])["config"]["image_size"]

    def prepare(ex):
        image = _decode_image(ex, size, stored)
        labels = tf.cast(ex["labels"], tf.float32)
        if training and aug is not None:
            image, labels = augment.augment_image(image, labels, aug)
        return image, tf.ensure_shape(labels, [NUM_CLASSES])

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=det or not training)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)


def _pick_cells(n: tf.Tensor, bag: int, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Indices of ``bag`` cells out of ``n`` (random when training, the first ones otherwise) and
    the validity mask; missing cells point at cell 0 and are masked."""
    order = tf.random.shuffle(tf.range(n)) if training else tf.range(n)
    order = order[:bag]
    valid = tf.ones_like(order, tf.float32)
    pad = bag - tf.shape(order)[0]
    order = tf.concat([order, tf.zeros([pad], tf.int32)], 0)
    valid = tf.concat([valid, tf.zeros([pad], tf.float32)], 0)
    return order, valid


def cell_bag_dataset(data: dict, aug: dict | None, batch_size: int, training: bool,
                     folds: Sequence[int] | None = None, exclude_folds: bool = False,
                     input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Batches of cell bags with their validity masks and per-output sample weights."""
    ds = _examples(data, "cells", cell_features(), training, folds, exclude_folds, input_context, need_cells=True)
    det = bool(data["deterministic"])
    bag = data["cells_per_bag"] if training else data["max_eval_cells"]
    size = data["cell_size"]

    def prepare(ex):
        pngs = tf.sparse.to_dense(ex["cells"])
        idx, valid = _pick_cells(tf.cast(ex["n_cells"], tf.int32), bag, training)
        picked = tf.gather(pngs, idx)
        cells = tf.map_fn(
            lambda s: tf.image.resize(tf.image.convert_image_dtype(tf.io.decode_png(s, channels=4), tf.float32), [size, size]),
            picked, fn_output_signature=tf.TensorSpec([size, size, 4], tf.float32),
        )
        cells = cells * valid[:, None, None, None]
        labels = tf.cast(ex["labels"], tf.float32)
        if training and aug is not None:
            cells, labels = augment.augment_bag(cells, labels, aug)
            cells = cells * valid[:, None, None, None]
        cells = tf.ensure_shape(cells, [bag, size, size, 4])
        labels = tf.ensure_shape(labels, [NUM_CLASSES])
        targets = {"cells": tf.tile(labels[None], [bag, 1]), "image": labels}
        weights = {"cells": valid, "image": tf.constant(1.0)}
        return {"cells": cells, "mask": valid}, targets, weights

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=det or not training)
    return ds.batch(batch_size, drop_remainder=training).prefetch(AUTOTUNE)


def make_dataset(config: dict, training: bool, batch_size: int, input_context=None) -> tf.data.Dataset:
    """The training (all folds but ``val_fold``) or validation (``val_fold``) pipeline of a config."""
    data, aug = config["data"], config["augment"]
    val = data["val_fold"]
    folds = None if val < 0 else [val]
    build = cell_bag_dataset if data["kind"] == "cells" else image_dataset
    if training:
        return build(data, aug, batch_size, True, folds, exclude_folds=True, input_context=input_context)
    return build(data, None, batch_size, False, folds, input_context=input_context)


def distribute(strategy: tf.distribute.Strategy, config: dict, training: bool, per_replica_batch: int):
    """A distributed dataset: each input pipeline batches ``per_replica_batch`` for its replicas."""
    global_batch = per_replica_batch * strategy.num_replicas_in_sync

    def fn(ctx: tf.distribute.InputContext):
        return make_dataset(config, training, ctx.get_per_replica_batch_size(global_batch), ctx)

    return strategy.distribute_datasets_from_function(fn)
