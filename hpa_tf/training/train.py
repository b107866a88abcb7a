"""Train a model from a config under any ``tf.distribute`` strategy, with the loop of
:mod:`hpa_tf.training.loop`.

Outputs under ``train.model_dir`` (local or ``gs://``), written by one process (the chief of a
multi-worker run), each file atomically (temporary name, then renamed):
``config.yaml`` (the effective config), ``backup/epoch-NNNNN.npz`` (every variable and the run's
state after each epoch; removed when the run finishes), ``best.keras`` (the epoch with the highest
validation mAP of image labels, across kills: ``best.json`` says which), ``last.keras``,
``train_log.csv`` and ``val_metrics.jsonl`` (per-class AUC, AP and F1 per epoch), TensorBoard ``logs/``.

A killed run started again resumes after its last backed-up epoch, with the same learning-rate
schedule, best epoch and logs; each epoch's data are rebuilt from (seed, epoch), so with
``train.deterministic`` the resumed run's weights equal an uninterrupted run's, bit for bit. A
backup that cannot be read is named and set aside, and the one before it is used. A run resumes only
backups of the same model fingerprint (:mod:`hpa_tf.training.folder`: settings, records and folds,
labels, starting weights); after any change it starts anew, saying what changed. A run in the folder of
a finished one starts anew. ``provenance.json`` is written last, so a killed run is never "done".
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import keras
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from hpa_tf import fs, provenance
from hpa_tf.cli import require_writable
from hpa_tf.config import save_config
from hpa_tf.data.pipeline import count_images, distribute, read_manifest, val_folds, validation_steps
from hpa_tf.lock import FolderLock
from hpa_tf.training import backup
from hpa_tf.training.folder import LOG_KEYS, TrainingFolder, model_made_from, without_switched_off
from hpa_tf.training.loop import Trainer
from hpa_tf.training.strategy import (
    configure_logical_cpus,
    get_strategy,
    is_chief,
    precision_policy,
)

EpochHook = Callable[[int, dict], None]


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to change."""


def save_model(model: keras.Model, path: str) -> None:
    """``model.save`` to ``path`` (local or ``gs://``) atomically."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        model.save(local)
        with open(local, "rb") as f:
            data = f.read()
    try:
        fs.write_bytes(path, data)
    except Exception as err:
        raise backup.storage_error(os.path.dirname(path) or ".", os.path.basename(path), err) from err


def _write(path: str, text: str) -> None:
    try:
        fs.write_text(path, text)
    except Exception as err:
        raise backup.storage_error(os.path.dirname(path) or ".", os.path.basename(path), err) from err


def _write_logs(model_dir: str, state: dict, writer) -> None:
    history = state["history"]
    _write(fs.join(model_dir, "train_log.csv"),
           pd.DataFrame(history, columns=[k for k in LOG_KEYS if any(k in h for h in history)]).to_csv(index=False))
    _write(fs.join(model_dir, "val_metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in state["per_class"]))
    if writer is not None and history:
        with writer.as_default():
            for key, value in history[-1].items():
                if key not in ("epoch", "seconds") and value is not None:
                    tf.summary.scalar(key, value, step=history[-1]["epoch"])
        writer.flush()


def _steps(config, replicas: int) -> tuple[int, int]:
    t, d = config["train"], config["data"]
    global_batch = t["batch_size"] * replicas
    records, folds = d["records"], val_folds(d)
    held_out = count_images(records, folds, d["val_sources"] or None) if folds else 0
    n_train = count_images(records) - held_out
    if n_train < 1:
        raise TrainingError(f"{records}: no training images outside the validation set (folds {folds}); "
                            "build records with more images or set data.val_folds=[]")
    if folds and held_out < 1:
        raise TrainingError(f"{records}: validation folds {folds} hold no images (the records have folds "
                            f"{', '.join(sorted(read_manifest(records).folds['images_per_fold']))})"
                            + (f" of sources {d['val_sources']}" if d["val_sources"] else "")
                            + "; pick other data.val_folds, or [] for none")
    if d["kind"] == "cell":  # one example per cell: an epoch sees every training cell once, on average
        manifest = read_manifest(records)
        n_train = int(round(n_train * manifest.n_cells / max(manifest.n_images, 1)))
    return int(t["steps_per_epoch"]) or max(1, n_train // global_batch), held_out


def train(config, hooks: Sequence[EpochHook] = ()) -> dict:
    """Train as ``config`` says; returns ``{"history", "model_dir", "replicas", "steps_per_epoch"}``.
    ``hooks`` are called after each epoch's outputs are written, with the epoch and its log row.

    >>> train(load_config("configs/demo_cpu.yaml"))  # doctest: +SKIP
    """
    t = config["train"]
    configure_logical_cpus(int(t["logical_cpus"]))
    keras.utils.set_random_seed(int(t["seed"]))
    if t["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    strategy = get_strategy(t["strategy"])
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision_policy(t["mixed_precision"], strategy))
    try:
        if not is_chief(strategy):
            return _train(config, strategy, hooks)
        require_writable(t["model_dir"], "train.model_dir")
        with FolderLock(t["model_dir"], "train_tpu.py"):  # one writer per model_dir
            return _train(config, strategy, hooks)
    finally:
        keras.mixed_precision.set_global_policy(previous)  # the caller's models stay as they were


def _train(config, strategy: tf.distribute.Strategy, hooks: Sequence[EpochHook]) -> dict:
    t = config["train"]
    chief = is_chief(strategy)
    model_dir = t["model_dir"]
    backup_dir = fs.join(model_dir, "backup")
    replicas = strategy.num_replicas_in_sync
    steps, n_val = _steps(config, replicas)
    epochs, per_call = int(t["epochs"]), int(t["steps_per_execution"])
    trainer = Trainer(config, strategy, steps * epochs, int(float(t["warmup_epochs"]) * steps))

    folder = TrainingFolder(model_dir)
    made_from = model_made_from(config)
    fingerprint = provenance.fingerprint("model", made_from)
    restored = backup.load_latest(backup_dir, set_aside=chief)
    what = [] if restored is None else provenance.differences(
        "model", restored[1].get("fingerprint"), restored[1].get("made_from", {}), made_from, without_switched_off)
    if what:
        print(f"{model_dir}: its backups are of another run ({', '.join(what)} changed): starting anew")
        restored = None
        if chief:
            backup.remove_all(backup_dir)
    if restored is not None:
        arrays, state = restored
        trainer.restore(arrays, state["variables"], backup_dir)
        print(f"resuming {model_dir} after epoch {state['epoch'] + 1} of {epochs} "
              f"(from {backup.path_of(backup_dir, state['epoch'])}: backups count epochs from 0)")
    else:
        state = {"epoch": -1, "best": None, "history": [], "per_class": []}
    if chief:
        try:
            fs.makedirs(model_dir)
            if restored is None:
                folder.forget()  # a killed new run must not leave the old run's models looking current
            else:
                provenance.forget(model_dir)
        except Exception as err:
            raise backup.storage_error(model_dir, "the run's folder", err) from err
        save_config(config, folder.file("config.yaml"))
        with trainer.averaged():
            _repair_best(model_dir, state, trainer.model)
        if restored is not None:  # a kill between an epoch's backup and its logs: no later epoch rewrites them
            _write_logs(model_dir, state, None)
    writer = _summary_writer(model_dir) if chief and t["tensorboard"] else None

    val_ds = distribute(strategy, config, False, int(t["batch_size"])) if val_folds(config["data"]) else None
    val_steps = validation_steps(n_val, int(t["batch_size"]), replicas, _pipelines(strategy)) if val_ds else 0
    for epoch in range(state["epoch"] + 1, epochs):
        start = time.perf_counter()
        iterator = iter(distribute(strategy, config, True, int(t["batch_size"]), epoch))
        losses, done = [], 0
        with tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not chief, leave=False) as bar:
            while done < steps:
                n = min(per_call, steps - done)
                losses.append((n, trainer.train_steps(iterator, n)))
                done += n
                bar.update(n)
        row = {"epoch": epoch, "loss": sum(n * float(v) for n, v in losses) / steps}
        if not math.isfinite(row["loss"]):
            raise TrainingError(f"the training loss became {row['loss']} in epoch {epoch + 1}: lower "
                                "train.learning_rate, or check the records with `python -m tfrecord_builder inspect`")
        if val_ds is not None and validates(epoch, epochs, int(t["validation_freq"])):
            with trainer.averaged():  # train.ema: the averaged weights are the ones validated and saved
                val = trainer.evaluate(val_ds, val_steps, per_call)
            row.update(val_loss=val["loss"], val_auc=val["auc"], val_map=val["map"], val_f1=val["f1"])
            state["per_class"].append({"epoch": epoch, **{k: val[k] for k in ("auc", "map", "f1", "per_class")}})
        row["learning_rate"] = float(trainer.optimizer.learning_rate)
        row["seconds"] = round(time.perf_counter() - start, 2)
        state["history"].append(row)
        state["epoch"] = epoch
        improved = "val_map" in row and (state["best"] is None or row["val_map"] > state["best"]["val_map"])
        if improved:
            state["best"] = {"epoch": epoch, "val_map": row["val_map"]}
        if chief:
            arrays, paths = trainer.state_arrays()
            state["variables"], state["config"] = paths, config.to_dict()
            state["fingerprint"], state["made_from"] = fingerprint, made_from
            backup.save(backup_dir, epoch, arrays, state, int(t["keep_backups"]))
        if improved:
            with trainer.averaged():
                if chief:
                    _save_best(model_dir, trainer.model, epoch, row["val_map"])
        if chief:
            _write_logs(model_dir, state, writer)
            print(_summary_line(row, epochs))
        for hook in hooks:
            hook(epoch, row)
    with trainer.averaged():
        if chief:
            save_model(trainer.model, fs.join(model_dir, "last.keras"))
    if chief:
        backup.remove_all(backup_dir)
        folder.finish(made_from)
    history = {k: [h.get(k) for h in state["history"]] for k in LOG_KEYS if k != "epoch"}
    return {"history": history, "model_dir": model_dir, "replicas": replicas, "steps_per_epoch": steps,
            "best": state["best"]}


def validates(epoch: int, epochs: int, every: int) -> bool:
    """Whether epoch ``epoch`` (from 0) of ``epochs`` validates under ``train.validation_freq`` =
    ``every``: every ``every``-th epoch and always the last; ``every`` 0: the last only.

    >>> [e for e in range(5) if validates(e, 5, 2)], [e for e in range(5) if validates(e, 5, 0)]
    ([1, 3, 4], [4])
    """
    return epoch == epochs - 1 or (every > 0 and (epoch + 1) % every == 0)


def _pipelines(strategy: tf.distribute.Strategy) -> int:
    """Input pipelines (one per worker or TPU host)."""
    extended = strategy.extended
    return int(getattr(extended, "_num_workers", 0) or getattr(extended, "num_hosts", 0) or 1)


def _summary_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch'] + 1}/{epochs}: loss {row['loss']:.4f}"]
    parts += [f"{k} {row[k]:.4f}" for k in ("val_loss", "val_auc", "val_map", "val_f1") if k in row]
    return ", ".join(parts) + f" ({row['seconds']:.1f} s)"


def _save_best(model_dir: str, model: keras.Model, epoch: int, val_map: float) -> None:
    save_model(model, fs.join(model_dir, "best.keras"))
    _write(fs.join(model_dir, "best.json"), json.dumps({"epoch": epoch, "val_map": val_map}))


def _repair_best(model_dir: str, state: dict, model: keras.Model) -> None:
    """A kill between an epoch's backup and its best.keras leaves best.keras one best behind; the
    restored weights are that epoch's, so write them."""
    best = state.get("best")
    if not best or best["epoch"] != state["epoch"]:
        return
    marker = fs.join(model_dir, "best.json")
    saved = json.loads(fs.read_text(marker)) if fs.exists(marker) else {}
    if saved.get("epoch") != best["epoch"]:
        _save_best(model_dir, model, best["epoch"], best["val_map"])


def _summary_writer(model_dir: str):
    try:
        return tf.summary.create_file_writer(fs.join(model_dir, "logs"))
    except Exception as err:  # noqa: BLE001 - TensorBoard logs are a convenience, never a reason to stop
        print(f"no TensorBoard logs ({type(err).__name__}: {err})")
        return None
