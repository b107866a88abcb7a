"""Out-of-fold per-cell labels for every training cell of a record set.

The models of one out-of-fold split were trained without some of the builder's folds
(``data.val_folds``, and ``data.val_sources``, as saved in each model's
``config.yaml``); they label only the cells of the images they held out, so no model labels a cell of
an image it trained on. Sources, by model kind: ``cam`` (an image model's CAM x cell), ``cells`` (a
cell-bag model's cell head), ``cell`` (a single-cell model: the previous round's); several models of
a kind in a split are averaged; ``combined`` is the mean of the sources' soft labels.

Each (split, shard) is written to ``OUT/parts/`` as soon as it is labelled: a killed run started again
labels only what is missing, and gives the same labels (no augmentation, no randomness). The parts
are merged into ``labels.npz`` (:mod:`hpa_tf.data.cell_labels`) at the end.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from hpa_tf import fs
from hpa_tf.provenance import file_digest
from hpa_tf.training.folder import TrainingFolder
from hpa_tf.data.pipeline import read_folds, read_manifest
from hpa_tf.inference.prepare import Prepared
from hpa_tf.pseudo.quality import label_quality, true_cell_labels
from hpa_tf.pseudo.soft import naive_labels, soft_labels
from hpa_tf.data.cell_labels import CellLabels, records_fingerprint

SOURCES = {"cam": "image model, CAM x cell", "cells": "cell-bag model, its cell head",
           "cell": "single-cell model (previous round)"}
KIND_SOURCE = {"image": "cam", "cells": "cells", "cell": "cell"}


class LabelError(ValueError):
    """Models or records that cannot give out-of-fold labels; the message says what to change."""


@dataclass
class Split:
    """The models trained without ``folds`` (of ``sources`` only, when given)."""

    folds: tuple[int, ...]
    sources: tuple[str, ...]
    models: list[str]

    def holds_out(self, fold: int, source: str) -> bool:
        return fold in self.folds and (not self.sources or source in self.sources)

    def __str__(self) -> str:
        return f"folds {list(self.folds)}" + (f" of {list(self.sources)}" if self.sources else "")


def plan_splits(models: Sequence[str]) -> list[Split]:
    """Group models by the folds they held out; splits must not overlap.

    >>> plan_splits(["runs/demo/round0/image/split0", "runs/demo/round0/cells/split0"])  # doctest: +SKIP
    [Split(folds=(0, 2, 4), sources=(), models=[...])]
    """
    groups: dict[tuple, list[str]] = {}
    for path in models:
        folder, model = TrainingFolder.of(path)
        if not fs.exists(model):
            raise LabelError(f"{model} not found: give a training folder of train_tpu.py (with best.keras) or a .keras file")
        if not fs.exists(folder.file("config.yaml")):
            raise LabelError(f"{folder.file('config.yaml')} not found: out-of-fold labelling reads which folds {model} was "
                             "trained without from the config.yaml train_tpu.py saved beside it")
        key = folder.held_out()
        if not key[0]:
            raise LabelError(f"{model} was trained on every fold (data.val_folds: []): it cannot label any training cell "
                             "out of fold; train one model per split with data.val_folds set")
        groups.setdefault(key, []).append(model)
    splits = [Split(folds, sources, paths) for (folds, sources), paths in sorted(groups.items())]
    seen: dict[int, Split] = {}
    for split in splits:
        for f in split.folds:
            if f in seen:
                raise LabelError(f"fold {f} is held out by two splits ({seen[f]} and {split}): give models of "
                                 "out-of-fold splits that do not overlap")
            seen[f] = split
    return splits


def check_trained_on(splits: Sequence[Split], records: str) -> str:
    """The records' fingerprint, after checking that every model was trained on exactly these
    records, folds included (else a model could label images it trained on)."""
    fingerprint = records_fingerprint(records)
    for split in splits:
        for model in split.models:
            folder, _ = TrainingFolder.of(model)
            record = folder.provenance()
            if record is None:
                raise LabelError(f"{model}: its training is unfinished or predates provenance.json ({folder.path} has none); "
                                 "train it again (python -m hpa_tf.train) before it labels anything")
            if record.made_from.get("records") != fingerprint:
                raise LabelError(f"{model} was trained on another record set or other folds than {records} (records "
                                 f"{record.made_from.get('records')} vs {fingerprint}): it could label images it trained "
                                 "on; label with models trained on these records")
    return fingerprint


def labels_made_from(records: str, models: Sequence[str], source: str, normalise: bool = True,
                     truth: bool = False, splits: Sequence[Split] | None = None) -> dict:
    """What the labels of ``records`` by ``models`` are made from: the records' and each model
    file's content, the source and rule. The job compares it with the stored record to skip labelling.
    ``splits``: :func:`plan_splits` of ``models`` when the caller has them already."""
    splits = plan_splits(models) if splits is None else splits
    return {"records": check_trained_on(splits, records), "source": source, "normalise": normalise, "truth": truth,
            "splits": {f"split{k}": {"folds": list(s.folds), "sources": list(s.sources),
                                     **{f"model{i}": file_digest(m) for i, m in enumerate(s.models)}}
                       for k, s in enumerate(splits)}}


def _read_folds(records: str) -> dict[str, int]:
    folds = read_folds(records)
    if folds is None:
        raise LabelError(f"{records}: records built before folds.csv (schema < 3) cannot be labelled out of fold; "
                         "build them again with `python -m tfrecord_builder build ...`")
    return folds


def read_record_pairs(records: str, shard: int, ids: set[str] | None = None) -> Iterator[tuple[dict, dict]]:
    """The image record and the cell record of each image of one shard (of ``ids`` only, when given:
    the others are skipped before their PNGs are decoded), decoded to NumPy, the cell crops too."""
    import tensorflow as tf

    from hpa_tf.data.schema import parse_cell_record, parse_image_record

    m = read_manifest(records)  # not shard_files: it checks every shard's size, on each call
    dtype = tf.uint16 if m.bit_depth == 16 else tf.uint8  # the records' own precision, as the pipelines read it
    pairs = tf.data.Dataset.zip(tuple(tf.data.TFRecordDataset(m.shard_paths(kind)[shard], compression_type=m.compression)
                                      for kind in ("images", "cells")))
    if ids is not None:
        if not ids:
            return
        wanted = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(sorted(ids), tf.string), tf.ones(len(ids), tf.int64)), 0)
        id_spec = {"id": tf.io.FixedLenFeature([], tf.string)}
        pairs = pairs.filter(lambda a, b: wanted.lookup(tf.io.parse_single_example(a, id_spec)["id"]) > 0)

    def decode(a, b):
        cell_set = parse_cell_record(b)
        cell_set["crops"] = tf.map_fn(lambda s: tf.io.decode_png(s, channels=4, dtype=dtype), cell_set["cells"],
                                      fn_output_signature=dtype)
        return parse_image_record(a, dtype), cell_set

    for a, b in pairs.map(decode).as_numpy_iterator():
        if a["id"] != b["id"]:
            raise LabelError(f"{records}: shard {shard}'s image and cell records are out of step ({a['id']!r} vs "
                             f"{b['id']!r}); rebuild the records")
        yield a, b


def _prepared(a: dict, b: dict, image_size: int, cell_size: int) -> Prepared:
    return Prepared(a["id"].decode(), cell_ids=b["cell_index"].astype(np.int64), images={image_size: a["image"]},
                    small_masks={image_size: a["mask"]}, crops={cell_size: b["crops"]})


def _label_unit(records: str, shard: int, split: Split, predictor, folds: dict[str, int], truth, sizes: tuple[int, int],
                group: int, bar: tqdm) -> dict:
    """Raw cell probabilities per source of the images of ``shard`` that ``split`` held out."""
    kinds = [KIND_SOURCE[m.kind] for m in predictor.models]
    out: dict = {"ids": [], "counts": [], "cell_index": [], "image_labels": [], "fold": [], "truth": [],
                 **{f"raw_{s}": [] for s in set(kinds)}}
    pending: list[tuple[dict, Prepared]] = []

    def flush():
        scores = predictor.score_many([p for _, p in pending])
        for (a, p), per_model in zip(pending, scores):
            out["ids"].append(p.image_id)
            out["counts"].append(p.n_cells)
            out["cell_index"].append(p.cell_ids)
            out["image_labels"].append(a["labels"].astype(np.float32))
            out["fold"].append(folds[p.image_id])
            for source in set(kinds):
                mine = [s.cells for s, k in zip(per_model, kinds) if k == source]
                out[f"raw_{source}"].append(np.mean(mine, axis=0).astype(np.float32))
            if truth is not None:
                out["truth"].append(true_cell_labels(a["mask"], p.cell_ids, truth.mask(p.image_id),
                                                     truth.cell_labels.get(p.image_id, {})).astype(np.float32))
            bar.update(1)
        pending.clear()

    held_out = {i for i, f in folds.items() if f in split.folds}
    for a, b in read_record_pairs(records, shard, held_out):
        image_id = a["id"].decode()
        if not len(b["cell_index"]) or not split.holds_out(folds.get(image_id, -2), a["source"].decode()):
            continue
        pending.append((a, _prepared(a, b, *sizes)))
        if len(pending) >= group:
            flush()
    if pending:
        flush()
    return out


def _save_part(path: str, part: dict) -> None:
    buf = io.BytesIO()
    arrays = {"ids": np.array(part["ids"], dtype=str), "counts": np.array(part["counts"], np.int64),
              "fold": np.array(part["fold"], np.int64),
              "image_labels": np.array(part["image_labels"], np.float32).reshape(-1, 19)}
    for key, rows in part.items():
        if key not in arrays and rows:
            arrays[key] = np.concatenate(rows) if key != "cell_index" else np.concatenate(rows).astype(np.int64)
    np.savez_compressed(buf, **arrays)
    fs.write_bytes(path, buf.getvalue())


def _load_part(path: str) -> dict:
    with np.load(io.BytesIO(fs.read_bytes(path))) as z:
        return {k: z[k] for k in z.files}


def label(records: str, models: Sequence[str], out: str, source: str = "combined", normalise: bool = True,
          truth_dir: str | None = None, batch: int = 16, group: int = 8, progress: bool = True) -> CellLabels:
    """Label every training cell of ``records`` out of fold with ``models`` (training folders or
    ``.keras`` files beside their ``config.yaml``); write ``out/labels.npz`` and ``meta.json``.

    >>> label("runs/demo/records", ["runs/demo/round0/cells/split0", "runs/demo/round0/cells/split1"],
    ...       "runs/demo/records/pseudo/round1")  # doctest: +SKIP
    """
    from hpa_tf.inference.predictor import Predictor
    from hpa_tf.truth import Truth

    splits = plan_splits(models)
    made_from = labels_made_from(records, models, source, normalise, bool(truth_dir), splits)
    manifest = read_manifest(records)
    folds = _read_folds(records)
    sizes = (manifest.image_size, manifest.cell_size)
    missing = sorted(set(folds.values()) - {f for s in splits for f in s.folds})
    if missing:
        print(f"warning: no model was trained without fold(s) {missing}: their cells get no labels "
              "(a single-cell model skips those images)")
    truth = Truth.load(truth_dir, split="train") if truth_dir else None
    n_shards = manifest.n_shards
    parts_dir = fs.join(out, "parts")
    fs.makedirs(parts_dir)
    fingerprint = made_from["records"]
    todo = sum(1 for i, f in folds.items() if any(f in s.folds for s in splits))
    with tqdm(total=todo, desc="labelling cells", unit="img", disable=not progress) as bar:
        for k, split in enumerate(splits):
            predictor = None
            settings = {**made_from["splits"][f"split{k}"], "records": fingerprint, "truth": bool(truth_dir)}  # model contents
            stamp = fs.join(parts_dir, f"split{k}.json")
            same = fs.exists(stamp) and json.loads(fs.read_text(stamp)) == settings  # parts written with these settings
            for shard in range(n_shards):
                path = fs.join(parts_dir, f"split{k}-shard{shard:05d}.npz")
                if same and fs.exists(path):
                    bar.update(len(_load_part(path)["ids"]))
                    continue
                if predictor is None:
                    predictor = Predictor.from_models(split.models, cell_view="cam", batch=batch)
                    _check_sizes(predictor, sizes, records)
                    fs.write_text(stamp, json.dumps(settings))
                _save_part(path, _label_unit(records, shard, split, predictor, folds, truth, sizes, group, bar))
    labels = _merge([fs.join(parts_dir, f"split{k}-shard{s:05d}.npz") for k in range(len(splits))
                     for s in range(n_shards)], source, normalise)
    labels.meta = {"records": records, "records_fingerprint": fingerprint, "source": source, "normalise": normalise,
                   "splits": [{"folds": list(s.folds), "sources": list(s.sources), "models": s.models} for s in splits],
                   "sources": sorted(k[4:] for k in labels.arrays if k.startswith("raw_")),
                   "images": len(labels.ids), "cells": int(len(labels.cell_index)), "unlabelled_folds": missing}
    if "truth" in labels.arrays:
        labels.meta["quality"] = quality_of(labels)
    labels.save(out, made_from)
    for name in fs.listdir(parts_dir):
        fs.remove(fs.join(parts_dir, name))
    return labels


def _check_sizes(predictor, sizes: tuple[int, int], records: str) -> None:
    for m in predictor.models:
        want = sizes[0] if m.kind == "image" else sizes[1]
        if m.contract.record_size != want:
            raise LabelError(f"{m.name} was trained on records of {m.contract.record_size} px, {records} holds "
                             f"{want} px: label with models trained on these records")


def _merge(paths: Sequence[str], source: str, normalise: bool) -> CellLabels:
    parts = [_load_part(p) for p in paths]
    parts = [p for p in parts if len(p["ids"])]
    if not parts:
        raise LabelError("no image was labelled: do the models' held-out folds hold any image of these records?")
    ids = np.concatenate([p["ids"] for p in parts])
    counts = np.concatenate([p["counts"] for p in parts])
    order = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in order])
    keys = sorted({k for p in parts for k in p if k.startswith("raw_") or k == "truth"})
    missing = [k for k in keys if any(k not in p for p in parts)]
    if missing:
        raise LabelError(f"the splits' models are not of the same kinds ({missing} missing in some): give every split "
                         "the same kinds of models")
    cat = {k: np.concatenate([p[k] for p in parts])[rows] for k in ["cell_index", *keys]}
    image_labels = np.concatenate([p["image_labels"] for p in parts])[order]
    fold = np.concatenate([p["fold"] for p in parts])[order]
    counts = counts[order]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arrays = {k: v for k, v in cat.items() if k != "cell_index"}
    for key in [k for k in keys if k.startswith("raw_")]:
        arrays[f"soft_{key[4:]}"] = np.concatenate([soft_labels(arrays[key][offsets[i] : offsets[i + 1]], image_labels[i],
                                                                normalise) for i in range(len(counts))]).astype(np.float32)
    softs = [arrays[k] for k in arrays if k.startswith("soft_")]
    arrays["soft_combined"] = np.mean(softs, axis=0).astype(np.float32)
    if f"soft_{source}" not in arrays:
        raise LabelError(f"--source {source}: these models give {sorted(k[5:] for k in arrays if k.startswith('soft_'))}")
    return CellLabels(ids[order], offsets, cat["cell_index"], arrays[f"soft_{source}"], image_labels, fold, arrays)


def quality_of(labels: CellLabels) -> dict:
    """Each source's per-cell labels against the truth, next to the naive labels."""
    naive = np.concatenate([naive_labels(int(labels.offsets[i + 1] - labels.offsets[i]), labels.image_labels[i])
                            for i in range(len(labels.ids))])
    sources = {"naive": naive, **{k[5:]: v for k, v in labels.arrays.items() if k.startswith("soft_")}}
    return label_quality(labels.arrays["truth"], sources)
