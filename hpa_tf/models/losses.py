"""Multi-label losses: binary cross-entropy or focal loss (as ``keras.losses.BinaryFocalCrossentropy``
defines it), with optional per-class weights. Models output probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="hpa_tf")
class MultiLabelLoss(keras.losses.Loss):
    """``MultiLabelLoss("focal", gamma=2.0, class_weights=[...19 values])``: mean over classes of the
    (weighted) element-wise loss; without class weights it equals Keras's BCE / focal loss."""

    def __init__(self, kind: str = "bce", gamma: float = 2.0, class_weights: Sequence[float] | None = None,
                 name: str = "multilabel_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if kind not in ("bce", "focal"):
            raise ValueError(f"loss kind must be 'bce' or 'focal', not {kind!r}")
        self.kind, self.gamma = kind, float(gamma)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        y_pred = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        y_true = ops.cast(y_true, "float32")
        bce = -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
        if self.kind == "focal":
            p_t = y_true * y_pred + (1.0 - y_true) * (1.0 - y_pred)
            bce = ops.power(1.0 - p_t, self.gamma) * bce
        if self.class_weights is not None:
            bce = bce * ops.convert_to_tensor(self.class_weights, "float32")
        return ops.mean(bce, axis=-1)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "gamma": self.gamma, "class_weights": self.class_weights}
