"""The image-level classifier: backbone -> 1x1 class-activation conv -> pooling -> 19 sigmoids.

With average pooling the 1x1 conv commutes with the pooling, so the class activation maps are
the same conv applied to the feature map: :func:`cam_model` returns them with no retraining.
The final sigmoid is float32 under any mixed-precision policy.
"""

from __future__ import annotations

import keras

from hpa_tf.labels import NUM_CLASSES
from hpa_tf.models.backbones import create_backbone
from hpa_tf.models.layers import InputContract, spatial_pool


def image_classifier(backbone: str, image_size: int, weights: str | None = None, pooling: str = "avg",
                     dropout: float = 0.0, contract: dict | None = None, any_size_backbone: bool = False) -> keras.Model:
    """``image_classifier("efficientnet_b0", 512)``: (B, S, S, 4) in [0, 1] -> (B, 19) probabilities.
    ``contract``: its input contract, carried by an identity layer named ``input_contract``;
    ``any_size_backbone``: the backbone accepts any input size (Puzzle-CAM feeds it tiles)."""
    inputs = keras.Input((image_size, image_size, 4), name="image")
    x = InputContract(contract, name="input_contract")(inputs) if contract else inputs
    shape = (None, None, 4) if any_size_backbone else (image_size, image_size, 4)
    features = create_backbone(backbone, shape, weights)(x)
    pooled = spatial_pool(features, pooling)
    if dropout:
        pooled = keras.layers.Dropout(dropout)(pooled)
    cam = keras.layers.Conv2D(NUM_CLASSES, 1, name="cam")
    logits = keras.layers.Reshape((NUM_CLASSES,), name="logits")(cam(keras.layers.Reshape((1, 1, -1))(pooled)))
    probs = keras.layers.Activation("sigmoid", dtype="float32", name="probs")(logits)
    return keras.Model(inputs, probs, name=f"image_{backbone}")


def cam_model(model: keras.Model) -> keras.Model:
    """Class activation maps (B, h, w, 19) of a trained :func:`image_classifier` (logit scale)."""
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    cam = model.get_layer("cam")
    image = model.inputs[0]
    return keras.Model(image, cam(backbone(image)), name=f"{model.name}_cam")
