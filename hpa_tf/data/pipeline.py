"""tf.data input pipelines over the builder's shards: image batches and cell bags.

Training: file-level shuffle, parallel interleave, parallel parse, shuffle buffer, ``repeat()``,
static shapes (``drop_remainder=True``), prefetch, ``deterministic=False`` unless asked. Each
epoch is its own dataset, its shuffles seeded by (``data.seed``, epoch) and each element's
augmentations by its position too (stateless ops): a run resumed at an epoch boundary sees the
batches an uninterrupted run sees. With ``data.repeat_threshold``, images of rare classes come up more
often (repeat factor sampling, :func:`repeat_factors`).
Evaluation: one pass in file order. Fold selection uses the ``fold`` feature the builder stored
(``folds.csv`` in the manifest says the same); with ``data.val_sources`` only those sources'
images of the validation fold validate, and the other sources' images of that fold train (the usual
practice with external data). Under a ``tf.distribute`` strategy use
:func:`distribute`, which batches per replica through ``distribute_datasets_from_function``; its
validation set is padded to static shapes with a ``valid`` flag, so every worker runs the same
number of steps and every image counts once.

Elements:
- image pipeline: ``(image (S, S, 4) float32 in [0, 1], labels (19,) float32)``;
- cell bags: ``({"cells": (N, C, C, 4), "mask": (N,)}, {"cells": (N, 19), "image": (19,)},
  {"cells": mask, "image": 1.0})`` - the third part is the per-output sample weight, so padded
  cells never count in the cell loss. Training samples N = ``cells_per_bag`` cells per image
  (padding when an image has fewer); evaluation takes the first ``max_eval_cells`` in order.
- single cells (``data.kind: cell``): training ``(cell (C, C, 4), soft labels (19,))``, each cell
  labelled from ``data.cell_labels`` (:mod:`hpa_tf.pseudo`) or with its image's labels; validation
  gives cell bags as above (the image's score is its best cell's).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from hpa_tf import fs
from hpa_tf.data import augment
from hpa_tf.data.contract import to_model_size
from hpa_tf.data.manifest import Manifest
from hpa_tf.data.schema import cell_features, image_features
from hpa_tf.labels import CLASS_NAMES, NUM_CLASSES

AUTOTUNE = tf.data.AUTOTUNE


def read_manifest(records: str) -> Manifest:
    """The builder's ``manifest.json`` (:class:`~hpa_tf.data.manifest.Manifest`), with a clear error
    when it is missing."""
    return Manifest.read(records)


def shard_files(records: str, kind: str) -> tuple[list[str], str]:
    """Shard paths of ``kind`` ("images" or "cells") and their compression; each shard's size is
    checked against the manifest (a stat per file), so a truncated shard is named at the start,
    not met as "truncated record" in the middle of an epoch."""
    m = read_manifest(records)
    paths = []
    for f in m.shards[kind]:
        path = fs.join(records, f.file)
        size = fs.size(path) if fs.exists(path) else -1
        if size != f.bytes:
            state = "is missing" if size < 0 else f"is {size} bytes, the manifest says {f.bytes}"
            raise ValueError(f"{path} {state}: rerun the build command that made {records}; it rebuilds broken "
                             "shards (`python -m tfrecord_builder inspect --verify` checks them all)")
        paths.append(path)
    return paths, m.compression


def read_folds(records: str) -> dict[str, int] | None:
    """Image ID -> fold from the build's ``folds.csv`` (records of schema 3 carry no fold), or None
    for older records, whose ``fold`` field holds it."""
    m = read_manifest(records)
    if m.schema_version < 3:
        return None
    import io

    import pandas as pd

    table = pd.read_csv(io.StringIO(fs.read_text(fs.join(records, m.folds["file"]))), dtype={"ID": str})
    return dict(zip(table["ID"], table["fold"].astype(int)))


def fold_table(records: str) -> tf.lookup.StaticHashTable | None:
    """:func:`read_folds` as an in-graph ID -> fold table (-2 for an unknown ID), or None."""
    folds = read_folds(records)
    if folds is None:
        return None
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(list(folds), tf.string),
                                               tf.constant(list(folds.values()), tf.int64))
    return tf.lookup.StaticHashTable(init, default_value=-2)


def count_images(records: str, folds: Sequence[int] | None = None, sources: Sequence[str] | None = None) -> int:
    """How many images the given folds hold (all folds when None), counting only ``sources`` if given.

    >>> count_images("records", [0], sources=["competition"])  # doctest: +SKIP
    4361
    """
    manifest = read_manifest(records)
    if sources:
        per_source = manifest.sources
        unknown = sorted(set(sources) - set(per_source))
        if unknown:
            raise ValueError(f"data.val_sources: {records} has no source {unknown}; it has {sorted(per_source)}")
        per_fold: dict[str, int] = {}
        for name in sources:
            for f, n in per_source[name]["images_per_fold"].items():
                per_fold[f] = per_fold.get(f, 0) + n
    else:
        per_fold = manifest.folds["images_per_fold"]
    return sum(n for f, n in per_fold.items() if folds is None or int(f) in folds)


def val_folds(data) -> list[int] | None:
    """The folds ``data.val_folds`` holds out, or None for none.

    >>> val_folds({"val_folds": [2]}), val_folds({"val_folds": [0, 3]}), val_folds({"val_folds": []})
    ([2], [0, 3], None)
    """
    return [int(f) for f in data["val_folds"]] or None


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffles and augmentations. ``epoch_seed(0, 3)`` -> 3"""
    return int(seed) * 100_003 + int(epoch)


def _files_dataset(files: list[str], compression: str, training: bool, deterministic: bool, seed: int,
                   input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
    """The records of ``files``; when training with several input pipelines, this pipeline's part:
    whole files when there are at least as many files as pipelines, else every n-th record (in a
    deterministic order, so the pipelines' parts are disjoint and cover every record)."""
    n = input_context.num_input_pipelines if training and input_context is not None else 1
    by_file = n > 1 and len(files) >= n
    ds = tf.data.Dataset.from_tensor_slices(files)
    if by_file:
        ds = ds.shard(n, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=min(len(files), 16), num_parallel_calls=AUTOTUNE,
        deterministic=deterministic or not training or (n > 1 and not by_file),
    )
    return ds.shard(n, input_context.input_pipeline_id) if n > 1 and not by_file else ds


def _selected(ex: dict, folds: Sequence[int] | None, sources: Sequence[str] | None, exclude: bool) -> tf.Tensor:
    """Whether a record is in ``folds`` (any fold when None) and one of ``sources`` (any when empty);
    the opposite with ``exclude`` (no folds: nothing is held out, every record is kept)."""
    if folds is None:
        return tf.constant(True)
    hit = tf.reduce_any(tf.equal(ex["fold"], tf.constant(list(folds), tf.int64)))
    if sources:
        hit = hit & tf.reduce_any(tf.equal(ex["source"], tf.constant(list(sources))))
    return tf.logical_not(hit) if exclude else hit


def _examples(data, kind: str, spec: dict, training: bool, folds: Sequence[int] | None, exclude_folds: bool,
              input_context: tf.distribute.InputContext | None, seed: int, need_cells: bool = False) -> tf.data.Dataset:
    """``(index, parsed record)`` of ``kind`` in the chosen folds and ``data.val_sources`` (or all
    others with ``exclude_folds``), with cells if asked; shuffled and repeated when training. The
    index (the position in the stream) seeds the record's augmentations."""
    files, compression = shard_files(data["records"], kind)
    det = bool(data["deterministic"])
    ds = _files_dataset(files, compression, training, det, seed, input_context)
    table = fold_table(data["records"])

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        if table is not None:
            ex["fold"] = table.lookup(ex["id"])
        return ex

    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=det or not training)
    sources = (data.get("val_sources") or None) if folds is not None else None

    def keep(ex):
        hit = _selected(ex, folds, sources, exclude_folds)
        return hit & (ex["n_cells"] > 0) if need_cells else hit

    ds = ds.filter(keep)
    if training and data["repeat_threshold"] > 0:
        ds = _repeated(ds, repeat_factors(data["records"], float(data["repeat_threshold"])), seed)
    if training:
        ds = ds.shuffle(data["shuffle_buffer"], seed=seed).repeat()
    return ds.enumerate()


def repeat_factors(records: str, threshold: float) -> list[float]:
    """Each class's repeat factor ``max(1, sqrt(threshold / f_c))``, ``f_c`` the share of the record
    set's images that have class ``c`` (the manifest's counts, every fold); 1 for a class no image has.

    Repeat factor sampling (Gupta et al., LVIS, CVPR 2019; detectron2's ``RepeatFactorTrainingSampler``):
    a training image comes up ``r_i = max`` over its classes of ``r_c`` times per pass, on average, so
    a class in fewer than ``threshold`` of the images is seen more often, by about ``sqrt(threshold /
    f_c)``, and images of common classes alone as before.

    >>> repeat_factors("records", 0.25)  # doctest: +SKIP
    [1.0, 1.34, ...]
    """
    manifest = read_manifest(records)
    n = max(manifest.n_images, 1)
    factors = []
    for name in CLASS_NAMES:
        share = manifest.class_frequencies.get(name, 0) / n
        factors.append(max(1.0, (threshold / share) ** 0.5) if share > 0 else 1.0)
    return factors


def _repeated(ds: tf.data.Dataset, factors: list[float], seed: int) -> tf.data.Dataset:
    """Each record ``floor(r_i)`` times, once more with probability ``r_i - floor(r_i)`` (a stateless
    draw from the seed and the record's position), ``r_i`` its largest class repeat factor."""
    table = tf.constant(factors, tf.float32)

    def copies(position, ex):
        r = tf.reduce_max(tf.where(tf.cast(ex["labels"], tf.float32) > 0, table, 1.0))
        # Folded in, so the draw is not the one that augments the element at this position.
        draw_seed = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), position]), 1)
        u = tf.random.stateless_uniform([], draw_seed)
        n = tf.cast(tf.floor(r), tf.int64) + tf.cast(u < r - tf.floor(r), tf.int64)
        return tf.data.Dataset.from_tensors(ex).repeat(n)

    return ds.enumerate().flat_map(copies)


def _pixel_dtype(records: str) -> tf.DType:
    """The records' pixel type: uint8, or uint16 for a ``--bit-depth 16`` build."""
    return tf.uint16 if read_manifest(records).bit_depth == 16 else tf.uint8


def _decode_image(ex: dict, size: int, stored: int, dtype: tf.DType = tf.uint8) -> tf.Tensor:
    image = tf.ensure_shape(tf.io.decode_png(ex["image"], channels=4, dtype=dtype), [stored, stored, 4])
    return tf.ensure_shape(to_model_size(image, size, compilable=False), [size, size, 4])  # the predictor's step too


def _image_elements(data, aug, training: bool, seed: int, examples: tf.data.Dataset) -> tf.data.Dataset:
    """``(image, labels)`` of each record."""
    size = data["image_size"]
    stored = read_manifest(data["records"]).image_size
    dtype = _pixel_dtype(data["records"])

    def prepare(index, ex):
        image = _decode_image(ex, size, stored, dtype)
        labels = tf.cast(ex["labels"], tf.float32)
        if training and aug is not None:
            image, labels = augment.augment_image(image, labels, aug, tf.stack([tf.constant(seed, tf.int64), index]))
        return image, tf.ensure_shape(labels, [NUM_CLASSES])

    return examples.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=bool(data["deterministic"]) or not training)


def _pick_cells(n: tf.Tensor, bag: int, seed: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
    """Indices of ``bag`` cells out of ``n`` (a random draw when ``seed`` is given, else the first
    ones) and the validity mask; missing cells point at cell 0 and are masked."""
    order = tf.argsort(tf.random.stateless_uniform([n], seed)) if seed is not None else tf.range(n)
    order = tf.cast(order[:bag], tf.int32)
    valid = tf.ones_like(order, tf.float32)
    pad = bag - tf.shape(order)[0]
    order = tf.concat([order, tf.zeros([pad], tf.int32)], 0)
    valid = tf.concat([valid, tf.zeros([pad], tf.float32)], 0)
    return tf.ensure_shape(order, [bag]), tf.ensure_shape(valid, [bag])  # static shapes (TPU, XLA)


def _bag_elements(data, aug, training: bool, seed: int, examples: tf.data.Dataset) -> tf.data.Dataset:
    """``({"cells", "mask"}, {"cells", "image"} targets, {"cells", "image"} weights)`` of each record."""
    bag = data["cells_per_bag"] if training else data["max_eval_cells"]
    size = data["cell_size"]
    stored = read_manifest(data["records"]).cell_size
    dtype = _pixel_dtype(data["records"])

    def prepare(index, ex):
        pngs = tf.sparse.to_dense(ex["cells"])
        element_seed = tf.stack([tf.constant(seed, tf.int64), index])
        s_pick, s_aug = tf.unstack(tf.random.experimental.stateless_split(element_seed, 2))
        idx, valid = _pick_cells(tf.cast(ex["n_cells"], tf.int32), bag, s_pick if training else None)
        picked = tf.gather(pngs, idx)
        crops = tf.map_fn(lambda s: tf.ensure_shape(tf.io.decode_png(s, channels=4, dtype=dtype), [stored, stored, 4]),
                          picked, fn_output_signature=tf.TensorSpec([stored, stored, 4], dtype))
        cells = to_model_size(crops, size, compilable=False) * valid[:, None, None, None]  # the predictor's step too
        labels = tf.cast(ex["labels"], tf.float32)
        if training and aug is not None:
            cells, labels = augment.augment_bag(cells, labels, aug, s_aug)
            cells = cells * valid[:, None, None, None]
        cells = tf.ensure_shape(cells, [bag, size, size, 4])
        labels = tf.ensure_shape(labels, [NUM_CLASSES])
        targets = {"cells": tf.tile(labels[None], [bag, 1]), "image": labels}
        weights = {"cells": valid, "image": tf.constant(1.0)}
        return {"cells": cells, "mask": valid}, targets, weights

    return examples.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=bool(data["deterministic"]) or not training)


def _cell_elements(data, aug, seed: int, examples: tf.data.Dataset) -> tf.data.Dataset:
    """``(cell (C, C, 4), soft labels (19,))``: every cell of every record on its own, shuffled across
    images (``data.cell_shuffle_buffer``), labelled from ``data.cell_labels`` (an image without labels
    there, or whose cells differ from the labels', is skipped) or else with its image's labels."""
    from hpa_tf.data.cell_labels import label_table

    size = data["cell_size"]
    stored = read_manifest(data["records"]).cell_size
    dtype = _pixel_dtype(data["records"])
    table = label_table(data["cell_labels"], data["records"], data["cell_label_source"]) if data["cell_labels"] else None

    def labelled(ex):
        n = tf.cast(ex["n_cells"], tf.int64)
        if table is None:
            return tf.tile(tf.cast(ex["labels"], tf.float32)[None], [n, 1])
        lookup, offsets, cell_index, labels = table
        row = lookup.lookup(ex["id"])
        start = offsets[tf.maximum(row, 0)]
        count = offsets[tf.maximum(row, 0) + 1] - start
        same = (row >= 0) & tf.equal(count, n)
        ids = cell_index[start : start + tf.where(same, n, 0)]
        same = same & tf.reduce_all(tf.equal(ids, tf.sparse.to_dense(ex["cell_index"])[: tf.size(ids)]))
        return labels[start : start + tf.where(same, n, 0)]

    def cells_of(index, ex):
        soft = labelled(ex)
        pngs = tf.sparse.to_dense(ex["cells"])[: tf.shape(soft)[0]]
        positions = tf.range(tf.shape(soft)[0], dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((tf.fill(tf.shape(positions), index), positions, pngs, soft))

    def prepare(index, position, png, soft):
        image = tf.ensure_shape(tf.io.decode_png(png, channels=4, dtype=dtype), [stored, stored, 4])
        cell = to_model_size(image, size, compilable=False)
        if aug is not None:
            cell, soft = augment.augment_image(cell, soft, aug, tf.stack([tf.constant(seed, tf.int64), index * 1024 + position]),
                                               cell=True)
        return tf.ensure_shape(cell, [size, size, 4]), tf.ensure_shape(soft, [NUM_CLASSES])

    det = bool(data["deterministic"])
    ds = examples.flat_map(cells_of).shuffle(data["cell_shuffle_buffer"], seed=seed)
    return ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=det)


def _elements(config, training: bool, input_context=None, epoch: int = 0) -> tf.data.Dataset:
    """Unbatched elements of the training (all but the held-out set) or validation (the held-out
    set: ``val_folds`` and ``val_sources``) pipeline. Single-cell models train on single cells and
    validate on their images' cells as bags (an image's score is its best cell's)."""
    data, aug = config["data"], config["augment"]
    folds = val_folds(data)
    seed = epoch_seed(data["seed"], epoch)
    cells = data["kind"] in ("cells", "cell")
    kind, spec = ("cells", cell_features()) if cells else ("images", image_features())
    examples = _examples(data, kind, spec, training, folds, training, input_context, seed, need_cells=cells)
    if data["kind"] == "cell" and training:
        return _cell_elements(data, aug, seed, examples)
    build = _bag_elements if cells else _image_elements
    return build(data, aug if training else None, training, seed, examples)


def make_dataset(config, training: bool, batch_size: int, input_context=None, epoch: int = 0) -> tf.data.Dataset:
    """Batches of the training pipeline of ``epoch`` (all folds but ``val_folds``: shuffled, augmented,
    repeated, static shapes) or of the validation set (one pass in order, last batch partial).

    Elements: image models ``(image, labels)``; cell bags ``(inputs, targets, sample weights)``.
    ``augment.mixup`` mixes the training batches of image and single-cell models (:func:`augment.mixup`).
    """
    ds = _elements(config, training, input_context, epoch).batch(batch_size, drop_remainder=training)
    alpha = float(config["augment"]["mixup"])
    if training and alpha > 0:
        # Seeded by (epoch, input pipeline, batch): a resumed epoch mixes exactly as the first time; the
        # fold-in keeps these draws apart from the per-record ones (seeded by the epoch and a position).
        pipeline = input_context.input_pipeline_id if input_context is not None else 0
        base = tf.random.experimental.stateless_fold_in(
            tf.constant([epoch_seed(config["data"]["seed"], epoch), pipeline], tf.int64), 2)
        ds = ds.enumerate().map(
            lambda i, batch: augment.mixup(*batch, alpha, tf.random.experimental.stateless_fold_in(base, i)),
            num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


def validation_steps(n_images: int, per_replica_batch: int, replicas: int, pipelines: int = 1) -> int:
    """Steps that evaluate every one of ``n_images`` once when each of ``pipelines`` input pipelines
    holds every ``pipelines``-th image and feeds ``replicas // pipelines`` replicas per step.

    >>> validation_steps(10, 2, 2), validation_steps(0, 4, 1)
    (3, 0)
    """
    per_pipeline = -(-n_images // pipelines)
    return -(-per_pipeline // (per_replica_batch * max(replicas // pipelines, 1)))


def padded_validation_dataset(config, per_replica_batch: int, input_context=None) -> tf.data.Dataset:
    """The validation set for a distributed loop: batches of ``{"x", "y", "w", "valid"}`` with static
    shapes, each input pipeline holding every n-th image, padded with ``valid == 0`` examples so
    that every pipeline runs the same :func:`validation_steps` and every image counts once."""
    data = config["data"]
    folds = val_folds(data)
    n = count_images(data["records"], folds, data.get("val_sources") or None)
    pipelines = input_context.num_input_pipelines if input_context else 1
    index = input_context.input_pipeline_id if input_context else 0
    replicas = input_context.num_replicas_in_sync if input_context else 1
    steps = validation_steps(n, per_replica_batch, replicas, pipelines)
    ds = _elements(config, False).shard(pipelines, index)

    def as_dict(*element):
        x, y = element[0], element[1]
        w = element[2] if len(element) > 2 else tf.constant(1.0)
        return {"x": x, "y": y, "w": w, "valid": tf.constant(1.0)}

    ds = ds.map(as_dict)
    blank = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat())
    per_step = per_replica_batch * max(replicas // pipelines, 1)
    return ds.take(steps * per_step).batch(per_replica_batch, drop_remainder=True).prefetch(AUTOTUNE)


def distribute(strategy: tf.distribute.Strategy, config, training: bool, per_replica_batch: int, epoch: int = 0):
    """A distributed dataset: each input pipeline batches ``per_replica_batch`` for its replicas;
    training data of ``epoch``, or the padded validation set."""
    global_batch = per_replica_batch * strategy.num_replicas_in_sync

    def fn(ctx: tf.distribute.InputContext):
        batch = ctx.get_per_replica_batch_size(global_batch)
        if training:
            return make_dataset(config, True, batch, ctx, epoch)
        return padded_validation_dataset(config, batch, ctx)

    return strategy.distribute_datasets_from_function(fn)
