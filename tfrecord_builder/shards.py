"""Shards: which images go where, writing one shard safely, and the manifest.

A shard is written under a temporary name and renamed when complete; its metadata file
(``_meta/shard-00003.json``) is written last and marks it done. A rerun skips shards whose
metadata and files exist and rebuilds the others, so a killed build loses only the shards it
was writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hpa_tf import fs
from hpa_tf.data.manifest import FILE as MANIFEST
from hpa_tf.data.manifest import KINDS, Manifest, Shard
from hpa_tf.data.schema import SCHEMA_VERSION
from hpa_tf.labels import CLASS_NAMES, NUM_CLASSES
from tfrecord_builder.build import Built, ImageJob
from tfrecord_builder.folds import assign_folds

PLAN = "plan.json"
FOLDS = "folds.csv"


def shard_name(kind: str, index: int, n_shards: int) -> str:
    """``images-00003-of-00042.tfrec``."""
    return f"{kind}-{index:05d}-of-{n_shards:05d}.tfrec"


def meta_path(out: str, index: int) -> str:
    return fs.join(out, "_meta", f"shard-{index:05d}.json")


def plan_shards(jobs: Sequence[ImageJob], per_shard: int, seed: int) -> list[list[ImageJob]]:
    """Shuffle the images once (so every shard mixes labels) and cut them into shards."""
    order = np.random.default_rng(seed).permutation(len(jobs))
    shuffled = [jobs[i] for i in order]
    return [shuffled[i : i + per_shard] for i in range(0, len(shuffled), per_shard)] or [[]]


def check_file(out: str, entry: dict, verify: bool = False) -> str:
    """Why a finished shard file is not what its metadata says ("" when it is): missing, another
    size (cheap: a stat), or with ``verify`` another sha256 (reads the file)."""
    path = fs.join(out, entry["file"])
    if not fs.exists(path):
        return f"{path} is missing"
    size = fs.size(path)
    if size != entry["bytes"]:
        return f"{path} is {size} bytes, its metadata says {entry['bytes']} (truncated or replaced)"
    if verify and _sha256(path) != entry["sha256"]:
        return f"{path} has another sha256 than its metadata says (corrupt)"
    return ""


def shard_done(out: str, index: int, n_shards: int, verify: bool = False) -> bool:
    """Whether a shard is complete: its metadata (written last) exists and both files match it
    (size; sha256 with ``verify``). A shard that does not match is reported and rebuilt."""
    if not fs.exists(meta_path(out, index)):
        return False
    meta = read_meta(out, index)
    for kind in KINDS:
        entry = meta["files"][kind]
        if entry["file"] != shard_name(kind, index, n_shards):
            return False
        problem = check_file(out, entry, verify)
        if problem:
            print(f"shard {index}: {problem}; rebuilding it")
            return False
    return True


def _sha256(path: str) -> str:
    return hashlib.sha256(fs.read_bytes(path)).hexdigest()


def write_shard(out: str, index: int, n_shards: int, results: Sequence[Built], compression: str) -> dict:
    """Write the image and cell shard of ``results`` (in their plan order) and the shard's metadata."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type=compression)
    fs.makedirs(out)
    files = {}
    good = [r for r in results if r.ok]
    for kind in KINDS:
        final = fs.join(out, shard_name(kind, index, n_shards))
        tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        with tf.io.TFRecordWriter(tmp, options) as writer:
            for r in good:
                writer.write(r.image_record if kind == "images" else r.cell_record)
        tf.io.gfile.rename(tmp, final, overwrite=True)
        files[kind] = {"file": shard_name(kind, index, n_shards), "examples": len(good),
                       "bytes": fs.size(final), "sha256": _sha256(final)}
    class_counts = np.zeros(NUM_CLASSES, np.int64)
    for r in good:
        class_counts[list(r.labels)] += 1
    meta = {
        "index": index, "files": files, "ids": [r.image_id for r in good], "sources": [r.source for r in good],
        "n_cells": int(sum(r.n_cells for r in good)), "class_counts": class_counts.tolist(),
        "errors": [{"ID": r.image_id, "error": r.error} for r in results if not r.ok],
        "timings": {k: float(sum(r.timings.get(k, 0.0) for r in results)) for k in ("read", "segment", "resize_crop", "encode")},
    }
    fs.write_text(meta_path(out, index), json.dumps(meta))
    return meta


def read_meta(out: str, index: int) -> dict:
    return json.loads(fs.read_text(meta_path(out, index)))


def write_manifest(out: str, config: dict, metas: Sequence[dict], labels: dict[str, Sequence[int]],
                   n_folds: int, seed: int, group_by: str = "antibody") -> Manifest:
    """Summarise all shards into ``manifest.json``; assign folds over the images that were built
    (``folds.csv``: multi-label stratified, so no fold is left empty by images that failed, the
    images of one antibody or well together: ``group_by``); list bad images in ``errors.csv``."""
    class_counts = np.sum([m["class_counts"] for m in metas], axis=0).astype(int)
    ids = sorted(i for m in metas for i in m["ids"])
    source_of = {i: src for m in metas for i, src in zip(m["ids"], m.get("sources", ["main"] * len(m["ids"])))}
    errors = [e for m in metas for e in m["errors"]]
    # first: when the images left cannot make the folds, errors.csv already says which failed
    fs.write_text(fs.join(out, "errors.csv"), pd.DataFrame(errors, columns=["ID", "error"]).to_csv(index=False))
    folds = assign_folds(ids, [labels[i] for i in ids], n_folds, seed, group_by) if ids else {}
    fold_counts: dict[str, int] = {}
    by_source: dict[str, dict[str, int]] = {}
    for i in ids:
        key = str(folds[i])
        fold_counts[key] = fold_counts.get(key, 0) + 1
        per = by_source.setdefault(source_of[i], {})
        per[key] = per.get(key, 0) + 1
    manifest = Manifest(
        out, SCHEMA_VERSION, config,
        counts={"images": len(ids), "cells": int(sum(m["n_cells"] for m in metas)), "errors": len(errors),
                "shards": len(metas)},
        folds={"n_folds": n_folds, "seed": seed, "group_by": group_by, "images_per_fold": dict(sorted(fold_counts.items())),
               "file": FOLDS},
        shards={kind: [Shard(**m["files"][kind]) for m in metas] for kind in KINDS},
        sources={name: {"images": sum(per.values()), "images_per_fold": dict(sorted(per.items()))}
                 for name, per in sorted(by_source.items())},
        class_frequencies={CLASS_NAMES[c]: int(class_counts[c]) for c in range(NUM_CLASSES)},
    )
    fold_table = pd.DataFrame({"ID": ids, "fold": [folds[i] for i in ids], "source": [source_of[i] for i in ids]})
    fs.write_text(fs.join(out, FOLDS), fold_table.to_csv(index=False))
    fs.write_text(fs.join(out, MANIFEST), manifest.to_json())
    return manifest
