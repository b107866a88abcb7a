"""The training loop, in the manner of Orbit (TensorFlow Model Garden): ``strategy.run`` of one
replica step inside a ``tf.function`` that runs N steps per host call, for training and for
validation, under any ``tf.distribute`` strategy (TPU, mirrored GPUs, several workers, one device).

Keras' ``fit`` cannot do this everywhere (``steps_per_execution`` > 1 under MirroredStrategy fails,
keras-team/keras#19246; MultiWorkerMirroredStrategy fails in fit, #20585); the loop needs no
Keras training machinery: the model's forward pass, a loss, and the optimizer's
``apply_gradients``, which all-reduces the replicas' gradients.

- Each replica's loss is divided by the *global* batch, so the all-reduced (summed) gradient is the
  gradient of the global mean loss, as with one device.
- ``train.jit_compile``: each replica's forward and backward pass (and its validation step) is
  XLA-compiled; the optimizer update stays outside (its cross-replica all-reduce).
- Mixed float16 (GPUs) scales the loss (``LossScaleOptimizer``); bfloat16 (TPUs) needs no scaling.
- ``train.ema``: the optimizer keeps a moving average of the weights (Keras' ``use_ema``);
  :meth:`Trainer.averaged` puts it in the model to validate and save, then gives the training
  weights back.
- Validation sums per-class score histograms over replicas and steps in the graph
  (:mod:`hpa_tf.training.metrics`); padded examples (``valid == 0``) count nowhere.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from hpa_tf.labels import NUM_CLASSES
from hpa_tf.data.contract import InputContract
from hpa_tf.models import build_loss, build_model
from hpa_tf.models.puzzle import PuzzleCAM
from hpa_tf.training.metrics import BINS, metrics_from_histograms, score_histograms
from hpa_tf.training.strategy import replica_compiled


def _schedule(lr: float, total_steps: int, warmup_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else lr, decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=lr if warmup_steps else None, warmup_steps=warmup_steps, alpha=0.01,
    )


class Trainer:
    """The model, its optimizer and the compiled step loops of one run.

    >>> trainer = Trainer(config, strategy, total_steps=1000, warmup_steps=50)  # doctest: +SKIP
    >>> mean_loss = trainer.train_steps(iter(dist_dataset), 32)  # doctest: +SKIP
    """

    def __init__(self, config, strategy: tf.distribute.Strategy, total_steps: int, warmup_steps: int):
        self.config, self.strategy = config, strategy
        t, m = config["train"], config["model"]
        self.kind = m["kind"]
        self.cells = self.kind == "cells"
        self.global_batch = int(t["batch_size"]) * strategy.num_replicas_in_sync
        self.cell_weight, self.image_weight = float(m["cell_loss_weight"]), float(m["image_loss_weight"])
        self.loss_fn = build_loss(config)
        self.puzzle_weights = (float(m["puzzle_cls_weight"]), float(m["puzzle_re_weight"]))
        with strategy.scope():
            self.model = build_model(config, InputContract.from_config(config))
            self.puzzle = PuzzleCAM(self.model, int(m["puzzle_tiles"])) if m["puzzle_tiles"] > 1 else None
            ema = float(t["ema"])
            optimizer = keras.optimizers.AdamW(_schedule(float(t["learning_rate"]), total_steps, warmup_steps),
                                               weight_decay=float(t["weight_decay"]), use_ema=ema > 0,
                                               ema_momentum=ema or 0.99)
            self.base_optimizer = optimizer
            self.scaled = keras.mixed_precision.global_policy().name == "mixed_float16"
            self.optimizer = keras.optimizers.LossScaleOptimizer(optimizer) if self.scaled else optimizer
            self.optimizer.build(self.model.trainable_variables)
        self.jit = bool(t["jit_compile"]) and not isinstance(strategy, tf.distribute.TPUStrategy)  # TPUs compile anyway
        self._compiled: dict[tuple[str, int], tf.types.experimental.GenericFunction] = {}
        self._train_fn = tf.function(self._train_steps)
        self._eval_fn = tf.function(self._eval_steps)

    def _maybe_jit(self, fn, name: str):
        """``fn`` XLA-compiled (one compiled function per replica) when ``train.jit_compile`` asks."""
        return replica_compiled(self._compiled, fn, name) if self.jit else fn

    # --- losses --------------------------------------------------------------------------------
    def _per_example_loss(self, y, pred, w) -> tf.Tensor:
        """(B,) loss of each example: the image loss, plus for cell bags the weighted cell loss (its
        mean over the bag's valid cells, as Keras' masked mean over all cells and the batch)."""
        loss = self.loss_fn.call
        if not self.cells:
            return loss(y, pred)
        n = tf.cast(tf.shape(w["cells"])[1], tf.float32)
        cell = tf.reduce_sum(loss(y["cells"], pred["cells"]) * w["cells"], axis=1) / n
        return self.cell_weight * cell + self.image_weight * loss(y["image"], pred["image"])

    def _forward_loss(self, x, y, w) -> tf.Tensor:
        """(B,) training loss; with Puzzle-CAM plus the pieces' classification and reconstruction."""
        if self.puzzle is None:
            return self._per_example_loss(y, self.model(x, training=True), w)
        probs, tile_probs, rec = self.puzzle(x, training=True)
        cls_weight, re_weight = self.puzzle_weights
        return self.loss_fn.call(y, probs) + cls_weight * self.loss_fn.call(y, tile_probs) + re_weight * rec

    def _replica_gradients(self, x, y, w):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(self._forward_loss(x, y, w)) / self.global_batch
            if self.model.losses:
                loss += tf.add_n(self.model.losses) / self.strategy.num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss) if self.scaled else loss
        return loss, tape.gradient(scaled, self.model.trainable_variables)

    # --- training --------------------------------------------------------------------------------
    def _replica_step(self, batch):
        x, y = batch[0], batch[1]
        w = batch[2] if len(batch) > 2 else None
        loss, grads = self._maybe_jit(self._replica_gradients, "train")(x, y, w)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss

    def _train_steps(self, iterator, steps: tf.Tensor) -> tf.Tensor:
        total = tf.constant(0.0)
        for _ in tf.range(steps):
            per_replica = self.strategy.run(self._replica_step, args=(next(iterator),))
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return total / tf.cast(steps, tf.float32)

    def train_steps(self, iterator, steps: int) -> tf.Tensor:
        """Run ``steps`` training steps in one host call; returns their mean loss (a tensor, so the
        host does not wait for it)."""
        return self._train_fn(iterator, tf.constant(steps, tf.int32))

    # --- validation ------------------------------------------------------------------------------
    def _cell_model_on_bags(self, x) -> dict:
        """A single-cell model on bags: its cells' probabilities and the image's (its best cell's)."""
        cells, mask = x["cells"], x["mask"]
        shape = tf.shape(cells)
        probs = self.model(tf.reshape(cells, [-1, *cells.shape[2:]]), training=False)
        probs = tf.reshape(probs, [shape[0], shape[1], NUM_CLASSES])
        return {"cells": probs, "image": tf.reduce_max(probs * mask[..., None], axis=1)}

    def _replica_eval(self, batch):
        if self.kind == "cell":
            pred = self._cell_model_on_bags(batch["x"])
            loss = self.loss_fn.call(batch["y"]["image"], pred["image"])
            probs, labels, valid = pred["image"], batch["y"]["image"], batch["valid"]
            return score_histograms(probs, labels, valid), tf.reduce_sum(loss * valid), tf.reduce_sum(valid)
        pred = self.model(batch["x"], training=False)
        valid = batch["valid"]
        loss = tf.reduce_sum(self._per_example_loss(batch["y"], pred, batch["w"]) * valid)
        probs, labels = (pred["image"], batch["y"]["image"]) if self.cells else (pred, batch["y"])
        return score_histograms(probs, labels, valid), loss, tf.reduce_sum(valid)

    def _replica_eval_maybe_jit(self, batch):
        return self._maybe_jit(self._replica_eval, "eval")(batch)

    def _eval_steps(self, iterator, steps: tf.Tensor):
        hist = tf.zeros([2, NUM_CLASSES, BINS])
        loss, count = tf.constant(0.0), tf.constant(0.0)
        total = tf.distribute.ReduceOp.SUM
        for _ in tf.range(steps):
            h, l_sum, n = self.strategy.run(self._replica_eval_maybe_jit, args=(next(iterator),))
            hist += self.strategy.reduce(total, h, axis=None)
            loss += self.strategy.reduce(total, l_sum, axis=None)
            count += self.strategy.reduce(total, n, axis=None)
        return hist, loss, count

    def evaluate(self, dataset, steps: int, per_call: int) -> dict:
        """Validation metrics of one pass over a padded distributed validation set."""
        hist = np.zeros([2, NUM_CLASSES, BINS])
        loss = count = 0.0
        iterator = iter(dataset)
        done = 0
        while done < steps:
            n = min(per_call, steps - done)
            h, l_sum, c = self._eval_fn(iterator, tf.constant(n, tf.int32))
            hist += h.numpy()
            loss += float(l_sum)
            count += float(c)
            done += n
        result = metrics_from_histograms(hist)
        result["loss"] = loss / max(count, 1.0)
        result["images"] = int(count)
        return result

    @contextlib.contextmanager
    def averaged(self):
        """Within the block the model holds the moving average of its weights (``train.ema``); the
        training weights come back after it. Without ``train.ema``, the model as it is."""
        if not self.base_optimizer.use_ema:
            yield self.model
            return
        weights = self.model.trainable_variables
        saved = [v.numpy() for v in weights]
        self.base_optimizer.finalize_variable_values(weights)
        try:
            yield self.model
        finally:
            for v, value in zip(weights, saved):
                v.assign(value)

    # --- state ------------------------------------------------------------------------------------
    def variables(self) -> list:
        """Every variable a resumed run needs: the model's and the optimizer's, in a fixed order."""
        return list(self.model.variables) + list(self.optimizer.variables)

    def state_arrays(self) -> tuple[dict[str, np.ndarray], list[str]]:
        """The variables' values by position, and their paths (to check a backup fits)."""
        variables = self.variables()
        return {f"v{k:05d}": np.asarray(v.numpy()) for k, v in enumerate(variables)}, [v.path for v in variables]

    def restore(self, arrays: dict[str, np.ndarray], paths: list[str], source: str) -> None:
        """Assign a backup's values; a backup of another model is an error naming the first mismatch."""
        variables = self.variables()
        if len(paths) != len(variables):
            raise ValueError(f"{source} holds {len(paths)} variables, this model and optimizer have {len(variables)}: "
                             "it was written by another config; use another train.model_dir")
        for k, (v, path) in enumerate(zip(variables, paths)):
            value = arrays[f"v{k:05d}"]
            if tuple(value.shape) != tuple(v.shape):
                raise ValueError(f"{source}: variable {path} has shape {value.shape}, this model's {v.path} "
                                 f"{tuple(v.shape)}: written by another config; use another train.model_dir")
            v.assign(value)
