"""Custom layers, registered so that models save and load as ``.keras``."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="hpa_tf")
class GeM(keras.layers.Layer):
    """Generalised-mean pooling over space, with a learnable exponent p (p=1: average; large p: max).

    >>> tuple(GeM()(ops.ones((2, 4, 4, 3))).shape)
    (2, 3)
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.p_init, self.eps = p, eps

    def build(self, input_shape):
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.p_init))

    def call(self, x):
        # In float32 whatever the policy: x ** 3 of features above ~40 overflows float16.
        p = ops.cast(self.p, "float32")
        x = ops.maximum(ops.cast(x, "float32"), self.eps)
        return ops.cast(ops.power(ops.mean(ops.power(x, p), axis=(1, 2)), 1.0 / p), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "p": self.p_init, "eps": self.eps}


@keras.saving.register_keras_serializable(package="hpa_tf")
class SpaceToDepth(keras.layers.Layer):
    """(B, H, W, C) -> (B, H / b, W / b, b * b * C): each b x b block of pixels becomes channels,
    in ``tf.nn.space_to_depth``'s order (row in block, column in block, channel). Nothing is lost:
    a stem that halves the resolution this way keeps every pixel for the first convolution (TResNet's
    and YOLOv5's "Focus" stem), where a resize would blur filaments and puncta away. H and W must be
    multiples of b.

    >>> tuple(SpaceToDepth(2)(ops.ones((1, 8, 6, 4))).shape)
    (1, 4, 3, 16)
    """

    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block = int(block)

    def call(self, x):
        b = self.block
        shape = ops.shape(x)
        h, w, c = shape[1], shape[2], x.shape[-1]
        x = ops.reshape(x, (-1, h // b, b, w // b, b, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, h // b, w // b, b * b * c))

    def compute_output_shape(self, input_shape):
        b = self.block
        h, w = (None if d is None else d // b for d in input_shape[1:3])
        return (input_shape[0], h, w, b * b * input_shape[3])

    def get_config(self):
        return {**super().get_config(), "block": self.block}


POOLINGS = ("avg", "gem", "avgmax")


def spatial_pool(features, pooling: str = "avg"):
    """Feature map (B, h, w, C) -> (B, C) by average or :class:`GeM` pooling, or (B, 2C) by the
    average and the max side by side (``avgmax``), the layer named ``pool``.

    GeM lets a few bright spots (a centrosome, nuclear bodies) outweigh the rest of the map,
    which an average dilutes; ``avgmax`` keeps both the spread (the average) and the brightest
    spot (the max) for the head to weigh.

    >>> tuple(spatial_pool(keras.Input((4, 4, 3)), "gem").shape), tuple(spatial_pool(keras.Input((4, 4, 3)), "avgmax").shape)
    ((None, 3), (None, 6))
    """
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool")(features)
    if pooling == "gem":
        return GeM(name="pool")(features)
    if pooling == "avgmax":
        return keras.layers.Concatenate(name="pool")([keras.layers.GlobalAveragePooling2D()(features),
                                                      keras.layers.GlobalMaxPooling2D()(features)])
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")


@keras.saving.register_keras_serializable(package="hpa_tf")
class MaskedBagPool(keras.layers.Layer):
    """Per-cell logits (B, N, C) + validity mask (B, N) -> image logits (B, C) by max or
    log-sum-exp over the valid cells only (padded cells never win); learnt weights over the cells:
    :class:`MaskedAttentionPool`.

    >>> tuple(MaskedBagPool("max")([ops.ones((1, 2, 3)), ops.ones((1, 2))]).shape)
    (1, 3)
    """

    def __init__(self, mode: str = "max", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("max", "lse"):
            raise ValueError(f"bag pooling must be 'max' or 'lse', not {mode!r}")
        self.mode = mode

    def call(self, inputs):
        logits, mask = inputs
        mask = ops.cast(mask, logits.dtype)[..., None]
        masked = logits + (mask - 1.0) * 1e4
        if self.mode == "max":
            return ops.max(masked, axis=1)
        return ops.logsumexp(masked, axis=1) - ops.log(ops.maximum(ops.sum(mask, axis=1), 1.0))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="hpa_tf")
class MaskedAttentionPool(keras.layers.Layer):
    """Per-cell features (B, N, D), per-cell logits (B, N, C) and validity mask (B, N) -> image
    logits (B, C): for each class c, a softmax over the valid cells of a gated attention score
    ``w_c . (tanh(V h_n) * sigmoid(U h_n))`` weighs the cells' logits of class c (attention-based
    multiple-instance pooling, Ilse, Tomczak and Welling, ICML 2018, with one attention per class:
    the cells that show one protein pattern need not be those of another). ``units``: the width of
    V and U. ``w`` starts at zero, so a new model pools by the mean of its valid cells and learns
    which cells to weigh; an image logit always lies between its cells' smallest and largest.
    Computed in float32 whatever the policy (a softmax over 1e4-masked scores).

    >>> tuple(MaskedAttentionPool(8)([ops.ones((1, 3, 5)), ops.ones((1, 3, 19)), ops.ones((1, 3))]).shape)
    (1, 19)
    """

    def __init__(self, units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shapes):
        features, logits = input_shapes[0][-1], input_shapes[1][-1]
        glorot = keras.initializers.GlorotUniform
        self.v = self.add_weight(name="v", shape=(features, self.units), initializer=glorot())
        self.u = self.add_weight(name="u", shape=(features, self.units), initializer=glorot())
        self.v_bias = self.add_weight(name="v_bias", shape=(self.units,), initializer="zeros")
        self.u_bias = self.add_weight(name="u_bias", shape=(self.units,), initializer="zeros")
        self.w = self.add_weight(name="w", shape=(self.units, logits), initializer="zeros")
        self.w_bias = self.add_weight(name="w_bias", shape=(logits,), initializer="zeros")

    def attention(self, features, mask):
        """The weights (B, N, C) of each cell for each class: 0 on padded cells, summing to 1 over
        a bag's valid cells (to 0 in a bag with none, which then pools to 0)."""
        features, valid = ops.cast(features, "float32"), ops.cast(mask, "float32")[..., None]
        f32 = lambda w: ops.cast(w, "float32")  # noqa: E731
        gate = ops.tanh(ops.matmul(features, f32(self.v)) + f32(self.v_bias)) * ops.sigmoid(
            ops.matmul(features, f32(self.u)) + f32(self.u_bias))
        scores = ops.matmul(gate, f32(self.w)) + f32(self.w_bias)
        weights = ops.softmax(scores + (valid - 1.0) * 1e4, axis=1) * valid
        return weights / ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1e-6)

    def call(self, inputs):
        features, logits, mask = inputs
        weights = self.attention(features, mask)
        return ops.cast(ops.sum(weights * ops.cast(logits, "float32"), axis=1), self.compute_dtype)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[1][0], input_shapes[1][-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="hpa_tf")
class UnflattenBag(keras.layers.Layer):
    """(B * N, C) per-cell values back to (B, N, C), B and N read from the bag at run time.

    >>> tuple(UnflattenBag()([ops.ones((6, 19)), ops.ones((2, 3, 8, 8, 4))]).shape)
    (2, 3, 19)
    """

    def call(self, inputs):
        flat, bag = inputs
        shape = ops.shape(bag)
        return ops.reshape(flat, (shape[0], shape[1], flat.shape[-1]))


@keras.saving.register_keras_serializable(package="hpa_tf")
class InputContract(keras.layers.Layer):
    """An identity layer that carries a model's input contract (:class:`hpa_tf.data.contract.InputContract`
    as a dict) in its config, so it travels with the saved model in any format.

    >>> tuple(InputContract({"kind": "image"})(ops.ones((1, 4, 4, 4))).shape)
    (1, 4, 4, 4)
    """

    def __init__(self, contract: dict, **kwargs):
        super().__init__(**kwargs)
        self.contract = dict(contract)

    def call(self, x):
        return x

    def get_config(self):
        return {**super().get_config(), "contract": self.contract}
