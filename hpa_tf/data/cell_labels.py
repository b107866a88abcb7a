"""Per-cell labels on disk, beside the records they label: ``RECORDS/pseudo/NAME/``.

- ``labels.npz``: ``ids`` (images), ``offsets`` (image i's cells are rows ``offsets[i]:offsets[i+1]``),
  ``cell_index`` (each row's id in the record's cell mask, in the record's cell order), ``labels``
  (rows x 19, the soft labels training reads), ``image_labels`` (images x 19), ``fold`` (images), and
  each source's raw cell probabilities as ``raw_<source>`` (rows x 19) and soft labels as
  ``soft_<source>``, so other rules can be tried without a model;
- ``meta.json``: the records they label (their fingerprint), the source and rule chosen, the models of
  each out-of-fold split, and with a truth folder the labels' quality;
- ``provenance.json`` (written last): what the labels were made from (:mod:`hpa_tf.provenance`), so
  a single-cell model trained on them knows their fingerprint and is retrained when they change.

Written atomically; records are built once and every round adds a folder. Owned here, in
:mod:`hpa_tf.data` (the pipeline reads it; :mod:`hpa_tf.pseudo` writes it).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
import json
from dataclasses import dataclass, field

import numpy as np

from hpa_tf import fs, provenance

LABELS_FILE = "labels.npz"
META_FILE = "meta.json"


def labels_fingerprint(folder: str) -> str:
    """The fingerprint of a finished per-cell label set (its ``provenance.json``); a ValueError when
    the folder holds none. ``labels_fingerprint("runs/demo/records/pseudo/round1")`` -> 'beef...'"""
    return provenance.require(folder, "labels", "per-cell label set (python -m hpa_tf.pseudo)").fingerprint


def records_fingerprint(records: str) -> str:
    """The fingerprint of a finished record set (its ``provenance.json``, see :mod:`hpa_tf.provenance`):
    what it was made from, folds included. ``records_fingerprint("runs/demo/records")`` -> 'c0ffee...'"""
    return provenance.require(records, "records", "record set (python -m tfrecord_builder build)").fingerprint


@dataclass
class CellLabels:
    """Soft labels of the cells of a record set. ``CellLabels.load("records/pseudo/round1")``"""

    ids: np.ndarray
    offsets: np.ndarray
    cell_index: np.ndarray
    labels: np.ndarray
    image_labels: np.ndarray
    fold: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # raw_<source>, soft_<source>, truth
    meta: dict = field(default_factory=dict)

    def rows(self, image_id: str) -> slice:
        i = int(np.flatnonzero(self.ids == image_id)[0])
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def save(self, folder: str, made_from: dict | None = None) -> None:
        """Write ``labels.npz``, ``meta.json`` and last ``provenance.json`` (each atomically).
        ``made_from``: what made the labels (models, settings); None for labels made by other means,
        which are then known by the records they label and their content."""
        provenance.forget(folder)
        if made_from is None:
            content = hashlib.sha256()
            for array in (self.ids.astype(str), self.offsets, self.cell_index, self.labels.astype(np.float32)):
                content.update(np.ascontiguousarray(array).tobytes())
            made_from = {"records": self.meta.get("records_fingerprint"), "content": content.hexdigest()[:16]}
        buf = io.BytesIO()
        np.savez_compressed(buf, ids=self.ids.astype(str), offsets=self.offsets, cell_index=self.cell_index,
                            labels=self.labels.astype(np.float32), image_labels=self.image_labels.astype(np.float32),
                            fold=self.fold, **self.arrays)
        fs.write_bytes(fs.join(folder, LABELS_FILE), buf.getvalue())
        fs.write_text(fs.join(folder, META_FILE), json.dumps(self.meta, indent=2))
        provenance.write(folder, "labels", made_from, [LABELS_FILE])

    @classmethod
    def load(cls, folder: str) -> CellLabels:
        path = fs.join(folder, LABELS_FILE)
        if not fs.exists(path):
            raise FileNotFoundError(f"{path} not found: make per-cell labels with `python -m hpa_tf.pseudo --records ... --models ... --out ...`")
        try:
            with np.load(io.BytesIO(fs.read_bytes(path))) as z:
                data = {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}): truncated or not a labels file; "
                             f"make the labels again (`python -m hpa_tf.pseudo ... --out {folder}`)") from err
        meta_path = fs.join(folder, META_FILE)
        meta = json.loads(fs.read_text(meta_path)) if fs.exists(meta_path) else {}
        base = {k: data.pop(k) for k in ("ids", "offsets", "cell_index", "labels", "image_labels", "fold")}
        return cls(**base, arrays=data, meta=meta)


def label_table(folder: str, records: str, source: str = ""):
    """What the tf.data pipeline needs to give each cell its label: ``(lookup, offsets, cell_index,
    labels)`` with ``lookup`` an image ID -> row table (-1 for an image without labels); ``source``
    picks another stored source than the one chosen when labelling. Labels made for other records
    are an error naming both."""
    import tensorflow as tf

    labels = CellLabels.load(folder)
    if source:
        stored = sorted(k[5:] for k in labels.arrays if k.startswith("soft_"))
        if f"soft_{source}" not in labels.arrays:
            raise ValueError(f"data.cell_label_source={source}: {folder} holds {stored}")
        labels.labels = labels.arrays[f"soft_{source}"]
    made_for = labels.meta.get("records_fingerprint")
    if made_for and made_for != records_fingerprint(records):
        raise ValueError(f"data.cell_labels {folder} were made for other records ({labels.meta.get('records')}), "
                         f"not {records}: make them again with `python -m hpa_tf.pseudo --records {records} ...`")
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(labels.ids.astype(str).tolist(), tf.string),
                                               tf.range(len(labels.ids), dtype=tf.int64))
    table = tf.lookup.StaticHashTable(init, default_value=-1)
    return (table, tf.constant(labels.offsets, tf.int64), tf.constant(labels.cell_index, tf.int64),
            tf.constant(labels.labels, tf.float32))
