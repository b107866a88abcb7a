"""A training run's folder (``train.model_dir``): its one reader and writer of names and contents.

``config.yaml`` (the effective config), ``best.keras`` (+ ``best.json``), ``last.keras``,
``train_log.csv`` (:data:`LOG_KEYS` columns), ``val_metrics.jsonl``, ``backup/``, ``logs/`` and
``provenance.json``: what the model was made from (:func:`model_made_from`), written when the run
finishes. The job, the labelling and the trainer read a run through :class:`TrainingFolder`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import pandas as pd
import yaml

from hpa_tf import fs, provenance
from hpa_tf.config import SWITCHED_OFF, _val_fold

CONFIG, BEST, LAST, BEST_JSON = "config.yaml", "best.keras", "last.keras", "best.json"
LOG, VAL_METRICS, BACKUP = "train_log.csv", "val_metrics.jsonl", "backup"
LOG_KEYS = ("epoch", "loss", "val_loss", "val_auc", "val_map", "val_f1", "learning_rate", "seconds")
# Settings that do not change what a run learns: not part of a model's fingerprint.
_NOT_IDENTITY = ("train.model_dir", "train.tensorboard", "train.keep_backups", "data.records", "data.cell_labels")


def _input_digest(value: str | None) -> str | None:
    """The digest of a weights file a config names (``imagenet:PATH``, a path), else the value."""
    if not value:
        return value
    path = value.split(":", 1)[1] if value.startswith("imagenet:") else value
    return provenance.quick_file_digest(path) if value != "imagenet" and fs.exists(path) else value


def without_switched_off(made_from: dict) -> dict:
    """``made_from`` without the settings that are off (:data:`hpa_tf.config.SWITCHED_OFF`), so a
    record written before such a setting existed, or while it was recorded, matches one written now.

    >>> without_switched_off({"settings": {"train": {"ema": 0.0, "epochs": 3}}})
    {'settings': {'train': {'epochs': 3}}}
    """
    if "settings" not in made_from:
        return made_from
    settings = json.loads(json.dumps(made_from["settings"]))
    for key, off in SWITCHED_OFF.items():
        section, name = key.split(".")
        if name in settings.get(section, {}) and settings[section][name] == off:
            del settings[section][name]
    return {**made_from, "settings": settings}


def model_made_from(config) -> dict:
    """What a model trained with ``config`` is made from: the effective settings (less those switched
    off, :func:`without_switched_off`), the fingerprint of its records (folds included) and of its
    per-cell labels, and the content of the weights it starts from. Raises ValueError when the
    records or labels are not finished artifacts."""
    from hpa_tf.data.cell_labels import labels_fingerprint, records_fingerprint

    settings = json.loads(json.dumps(config.to_dict()))
    for key in _NOT_IDENTITY:
        section, name = key.split(".")
        settings[section].pop(name, None)
    settings["model"]["init_from"] = _input_digest(config.model.init_from)
    settings["model"]["weights"] = _input_digest(config.model.weights)
    labels, records = config.data.cell_labels, records_fingerprint(config.data.records)
    if labels:
        made_for = provenance.require(labels, "labels", "per-cell label set (python -m hpa_tf.pseudo)").made_from
        if made_for.get("records") != records:
            raise ValueError(f"data.cell_labels {labels} were made for another record set than {config.data.records} "
                             f"(records {made_for.get('records')} vs {records}): make them again with "
                             f"`python -m hpa_tf.pseudo --records {config.data.records} ...`")
    made_from = {"settings": settings, "records": records, "cell_labels": labels_fingerprint(labels) if labels else None}
    return without_switched_off(made_from)


@dataclass(frozen=True)
class TrainingFolder:
    """``TrainingFolder("runs/demo/round0/image/split0").held_out()`` -> ((0,), ())"""

    path: str

    @classmethod
    def of(cls, model_or_folder: str) -> tuple[TrainingFolder, str]:
        """(the run's folder, its model file) of a training folder (its ``best.keras``) or of a
        ``.keras`` file inside one."""
        if model_or_folder.endswith(".keras"):
            parent = model_or_folder.rsplit("/", 1)[0] if "/" in model_or_folder else "."
            return cls(parent), model_or_folder
        return cls(model_or_folder), fs.join(model_or_folder, BEST)

    def file(self, name: str) -> str:
        return fs.join(self.path, name)

    def config(self) -> dict:
        """The saved effective config (a dict), or a FileNotFoundError naming the file."""
        path = self.file(CONFIG)
        if not fs.exists(path):
            raise FileNotFoundError(f"{path} not found: not a training folder of train_tpu.py")
        return yaml.safe_load(fs.read_text(path)) or {}

    def held_out(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The folds (and sources, empty for all) the run kept out of training; () folds for none."""
        data = self.config().get("data", {})
        folds = data["val_folds"] if "val_folds" in data else _val_fold(data.get("val_fold", 0))  # an older config.yaml
        return tuple(sorted(int(f) for f in folds)), tuple(sorted(data.get("val_sources") or []))

    def provenance(self) -> provenance.Provenance | None:
        return provenance.read(self.path)

    def is_current(self, config, say: bool = True) -> bool:
        """Whether the folder holds a finished run of exactly ``config`` on the same records and labels
        (with ``say``, why not is printed)."""
        try:
            made_from = model_made_from(config)
        except (ValueError, FileNotFoundError):
            return False
        return provenance.is_current(self.path, "model", made_from, say, normalize=without_switched_off)

    def forget(self) -> None:
        """Remove what a previous run left that a new run would not overwrite at once."""
        provenance.forget(self.path)
        for name in (BEST, LAST, BEST_JSON, LOG, VAL_METRICS):
            fs.remove(self.file(name))

    def finish(self, made_from: dict) -> None:
        """Record the run as complete (call after ``last.keras`` is written), made from ``made_from``
        (:func:`model_made_from`)."""
        files = [n for n in (LAST, BEST) if fs.exists(self.file(n))]
        provenance.write(self.path, "model", made_from, files)

    def log(self) -> pd.DataFrame | None:
        """``train_log.csv`` as a table, or None before the first epoch."""
        path = self.file(LOG)
        return pd.read_csv(io.StringIO(fs.read_text(path))) if fs.exists(path) else None

    def best_epoch(self) -> dict | None:
        """The log row of the best validation epoch (the last epoch without validation), or None."""
        df = self.log()
        if df is None or df.empty:
            return None
        best = df.loc[df["val_map"].idxmax()] if "val_map" in df and df["val_map"].notna().any() else df.iloc[-1]
        return {**best.to_dict(), "epochs": len(df)}
