"""Fit a model from a config under any ``tf.distribute`` strategy.

Outputs under ``train.model_dir`` (local or ``gs://``): ``config.yaml`` (the effective config),
``backup/`` (BackupAndRestore: a killed run resumes from its last finished epoch with the same
learning-rate schedule, since the optimizer's step count is restored), ``best.keras`` (highest
validation mAP of image labels) and ``last.keras``, ``train_log.csv``, ``logs/`` (TensorBoard) and
``val_metrics.jsonl`` (per-class AUC, AP and F1 per epoch); a new run in the folder of a finished
one starts both logs anew, a resumed one appends.

``train.seed`` seeds the weights and augmentations; with ``train.deterministic`` a rerun on the same
machine and TensorFlow gives the same weights (TensorFlow's op determinism, which also makes tf.data
keep its order; it stays on for the rest of the process).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import keras
import tensorflow as tf

from hpa_tf import fs
from hpa_tf.config import save_config
from hpa_tf.data.pipeline import count_images, distribute, make_dataset
from hpa_tf.models import build_loss, build_model
from hpa_tf.training.strategy import configure_logical_cpus, get_strategy, precision_policy
from hpa_tf.training.validation import ValidationMetrics


def _schedule(lr: float, total_steps: int, warmup_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else lr, decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=lr if warmup_steps else None, warmup_steps=warmup_steps, alpha=0.01,
    )


def _compile(model: keras.Model, config: dict, optimizer: keras.optimizers.Optimizer) -> None:
    loss = build_loss(config)
    m, t = config["model"], config["train"]
    if m["kind"] == "cells":
        model.compile(
            optimizer=optimizer, loss={"cells": loss, "image": build_loss(config)},
            loss_weights={"cells": m["cell_loss_weight"], "image": m["image_loss_weight"]},
            steps_per_execution=t["steps_per_execution"],
        )
    else:
        model.compile(optimizer=optimizer, loss=loss, steps_per_execution=t["steps_per_execution"],
                      metrics=[keras.metrics.AUC(multi_label=True, num_labels=19, name="auc")])


def train(config: dict, extra_callbacks: Sequence[keras.callbacks.Callback] = ()) -> dict:
    """Train as ``config`` says; returns ``{"history", "model_dir", "replicas", "steps_per_epoch"}``.

    >>> train(load_config("configs/demo_cpu.yaml"))  # doctest: +SKIP
    """
    t = config["train"]
    configure_logical_cpus(int(t["logical_cpus"]))
    keras.utils.set_random_seed(int(t["seed"]))
    if t["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    strategy = get_strategy(t["strategy"])
    keras.mixed_precision.set_global_policy(precision_policy(t["mixed_precision"], strategy))
    model_dir = t["model_dir"]
    fs.makedirs(model_dir)
    backup = fs.join(model_dir, "backup")
    if not fs.exists(backup):  # a new run, not a resumed one: logs of an earlier run would mix in
        for name in ("train_log.csv", "val_metrics.jsonl"):
            fs.remove(fs.join(model_dir, name))
    save_config(config, fs.join(model_dir, "config.yaml"))

    replicas = strategy.num_replicas_in_sync
    global_batch = t["batch_size"] * replicas
    val_fold = config["data"]["val_fold"]
    records, val_sources = config["data"]["records"], config["data"]["val_sources"]
    n_train = count_images(records) - (count_images(records, [val_fold], val_sources) if val_fold >= 0 else 0)
    steps = int(t["steps_per_epoch"]) or max(1, n_train // global_batch)
    total = steps * int(t["epochs"])
    with strategy.scope():
        model = build_model(config)
        optimizer = keras.optimizers.AdamW(
            _schedule(float(t["learning_rate"]), total, int(float(t["warmup_epochs"]) * steps)),
            weight_decay=float(t["weight_decay"]),
        )
        _compile(model, config, optimizer)

    train_ds = distribute(strategy, config, True, t["batch_size"])
    callbacks: list[keras.callbacks.Callback] = [keras.callbacks.BackupAndRestore(backup)]
    if val_fold >= 0:
        val_ds = make_dataset(config, False, t["batch_size"])
        output = "image" if config["model"]["kind"] == "cells" else None
        callbacks += [
            ValidationMetrics(val_ds, model_dir, output),
            keras.callbacks.ModelCheckpoint(fs.join(model_dir, "best.keras"), monitor="val_map", mode="max", save_best_only=True),
        ]
    callbacks.append(keras.callbacks.CSVLogger(fs.join(model_dir, "train_log.csv"), append=True))
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(fs.join(model_dir, "logs"), profile_batch=0))
    else:
        print("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
    callbacks += list(extra_callbacks)
    history = model.fit(train_ds, epochs=int(t["epochs"]), steps_per_epoch=steps, callbacks=callbacks, verbose=2,
                        shuffle=False)  # the dataset shuffles itself
    model.save(fs.join(model_dir, "last.keras"))
    return {"history": history.history, "model_dir": model_dir, "replicas": replicas, "steps_per_epoch": steps}
