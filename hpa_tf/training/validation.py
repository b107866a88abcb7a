"""Per-epoch validation of image-level predictions: per-class ROC AUC and F1, and the mAP of
image labels (mean over classes of average precision), logged for Keras and saved per epoch."""

from __future__ import annotations

import json

import keras
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from hpa_tf import fs
from hpa_tf.labels import CLASS_NAMES, NUM_CLASSES


def image_label_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict:
    """Macro AUC / AP / F1 over the classes that have both positives and negatives, and per class.

    >>> image_label_metrics(np.eye(19)[[0, 1]], np.eye(19)[[0, 1]] * 0.9)["auc"]
    1.0
    """
    per_class = {}
    for c in range(NUM_CLASSES):
        t, p = y_true[:, c], y_prob[:, c]
        pred = p >= threshold
        tp = float((pred & (t > 0.5)).sum())
        f1 = 2 * tp / max(float(pred.sum() + (t > 0.5).sum()), 1.0)
        if 0 < t.sum() < len(t):
            per_class[CLASS_NAMES[c]] = {"auc": float(roc_auc_score(t, p)), "ap": float(average_precision_score(t, p)), "f1": f1}
    if not per_class:
        return {"auc": float("nan"), "map": float("nan"), "f1": float("nan"), "per_class": {}}
    mean = {k: float(np.mean([v[k] for v in per_class.values()])) for k in ("auc", "ap", "f1")}
    return {"auc": mean["auc"], "map": mean["ap"], "f1": mean["f1"], "per_class": per_class}


class ValidationMetrics(keras.callbacks.Callback):
    """Adds ``val_auc``, ``val_map``, ``val_f1`` to the epoch logs (before checkpoints read them) and
    appends the per-class figures to ``model_dir/val_metrics.jsonl``."""

    def __init__(self, dataset, model_dir: str, output: str | None = None):
        super().__init__()
        self.dataset, self.model_dir, self.output = dataset, model_dir, output

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        ys, ps = [], []
        for batch in self.dataset:
            x, y = batch[0], batch[1]
            pred = self.model(x, training=False)
            if self.output:
                pred, y = pred[self.output], y[self.output]
            ys.append(np.asarray(y))
            ps.append(np.asarray(pred, dtype=np.float32))
        result = image_label_metrics(np.concatenate(ys), np.concatenate(ps))
        if logs is not None:
            logs.update(val_auc=result["auc"], val_map=result["map"], val_f1=result["f1"])
        path = fs.join(self.model_dir, "val_metrics.jsonl")
        old = fs.read_text(path) if fs.exists(path) else ""
        fs.write_text(path, old + json.dumps({"epoch": epoch, **result}) + "\n")
