"""The pseudo-3D cell-bag model: N cells of one image through a shared backbone, a per-cell
head scored against the image label, and an image head pooled over the valid cells.

Inputs ``{"cells": (B, N, C, C, 4), "mask": (B, N)}``; outputs ``{"cells": (B, N, 19),
"image": (B, 19)}`` probabilities (float32). Train with per-output sample weights (the data
pipeline gives ``mask`` for the cells), so padded cells never count in the cell loss; the
two losses are weighted (0.1 cell + 1.0 image in the 2nd-place solution).
"""

from __future__ import annotations

import keras

from hpa_tf.labels import NUM_CLASSES
from hpa_tf.models.backbones import create_backbone
from hpa_tf.models.layers import (
    InputContract,
    MaskedAttentionPool,
    MaskedBagPool,
    UnflattenBag,
    spatial_pool,
)


BAG_POOLINGS = ("max", "lse", "attention")


def cell_bag_model(backbone: str, cell_size: int, cells_per_bag: int | None = None, weights: str | None = None,
                   bag_pooling: str = "max", dropout: float = 0.0, pooling: str = "avg",
                   contract: dict | None = None) -> keras.Model:
    """``cell_bag_model("efficientnet_b0", 128)``; ``cells_per_bag=None`` accepts any bag size.

    ``pooling`` (avg | gem | avgmax) pools each cell's feature map, ``bag_pooling`` the cells' logits into
    the image's: ``max``, ``lse`` (log-sum-exp, minus log N) or ``attention`` (learnt per-class weights
    from each cell's pooled features, :class:`~hpa_tf.models.layers.MaskedAttentionPool`);
    ``contract``: its input contract, carried by an identity layer named ``input_contract``.
    """
    if bag_pooling not in BAG_POOLINGS:
        raise ValueError(f"bag_pooling must be one of {', '.join(BAG_POOLINGS)}, not {bag_pooling!r}")
    cells = keras.Input((cells_per_bag, cell_size, cell_size, 4), name="cells")
    mask = keras.Input((cells_per_bag,), name="mask")
    net = create_backbone(backbone, (cell_size, cell_size, 4), weights)
    x = InputContract(contract, name="input_contract")(cells) if contract else cells
    flat = keras.layers.Reshape((cell_size, cell_size, 4), name="to_cells")(keras.ops.reshape(x, (-1, cell_size, cell_size, 4)))
    pooled = spatial_pool(net(flat), pooling)
    if dropout:
        pooled = keras.layers.Dropout(dropout)(pooled)
    cell_logits = keras.layers.Dense(NUM_CLASSES, name="cell_logits")(pooled)
    bag_logits = UnflattenBag(name="to_bags")([cell_logits, cells])
    if bag_pooling == "attention":
        bag_features = UnflattenBag(name="features_to_bags")([pooled, cells])
        image_logits = MaskedAttentionPool(name="bag_pool")([bag_features, bag_logits, mask])
    else:
        image_logits = MaskedBagPool(bag_pooling, name="bag_pool")([bag_logits, mask])
    outputs = {
        "cells": keras.layers.Activation("sigmoid", dtype="float32", name="cell_probs")(bag_logits),
        "image": keras.layers.Activation("sigmoid", dtype="float32", name="image_probs")(image_logits),
    }
    return keras.Model({"cells": cells, "mask": mask}, outputs, name=f"cellbag_{backbone}")
