"""The single-cell model: one cell crop -> 19 sigmoids, trained on per-cell (soft) labels.

The second stage of the 1st and 3rd places: once every training cell has labels of its own
(:mod:`hpa_tf.pseudo`), a plain classifier learns from cells, shuffled across images. Its max over
an image's cells is also an image-level score. The head is named ``cell_logits`` like the cell-bag
model's, so either starts the other (``model.init_from``).
"""

from __future__ import annotations

import keras

from hpa_tf.labels import NUM_CLASSES
from hpa_tf.models.backbones import create_backbone
from hpa_tf.models.layers import InputContract, spatial_pool


def cell_model(backbone: str, cell_size: int = 128, weights: str | None = None, pooling: str = "gem",
               dropout: float = 0.0, contract: dict | None = None) -> keras.Model:
    """``cell_model("efficientnet_b0", 128)``: (B, C, C, 4) in [0, 1] -> (B, 19) probabilities.

    >>> tuple(cell_model("small_cnn", 32).output.shape)
    (None, 19)
    """
    inputs = keras.Input((cell_size, cell_size, 4), name="cell")
    x = InputContract(contract, name="input_contract")(inputs) if contract else inputs
    pooled = spatial_pool(create_backbone(backbone, (cell_size, cell_size, 4), weights)(x), pooling)
    if dropout:
        pooled = keras.layers.Dropout(dropout)(pooled)
    logits = keras.layers.Dense(NUM_CLASSES, name="cell_logits")(pooled)
    probs = keras.layers.Activation("sigmoid", dtype="float32", name="probs")(logits)
    return keras.Model(inputs, probs, name=f"cell_{backbone}")
