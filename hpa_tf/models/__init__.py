"""Models: backbones by name, the image classifier, the cell-bag model, losses; ``build_model(config)``."""

from __future__ import annotations

import keras

from hpa_tf.models.backbones import BACKBONES, create_backbone, widen_stem
from hpa_tf.models.cellbag import cell_bag_model
from hpa_tf.models.classifier import cam_model, image_classifier
from hpa_tf.models.layers import GeM, MaskedBagPool
from hpa_tf.models.losses import MultiLabelLoss


def build_model(config: dict) -> keras.Model:
    """The model a config describes (``model.kind`` image or cells)."""
    m, d = config["model"], config["data"]
    if m["kind"] == "cells":
        return cell_bag_model(m["backbone"], d["cell_size"], None, m["weights"], m["bag_pooling"], m["dropout"], m["pooling"])
    if m["kind"] == "image":
        return image_classifier(m["backbone"], d["image_size"], m["weights"], m["pooling"], m["dropout"])
    raise ValueError(f"model.kind must be 'image' or 'cells', not {m['kind']!r}")


def build_loss(config: dict) -> MultiLabelLoss:
    """The loss of a config's ``loss`` section."""
    spec = config["loss"]
    return MultiLabelLoss(spec["kind"], spec["gamma"], spec["class_weights"])


__all__ = [
    "BACKBONES", "GeM", "MaskedBagPool", "MultiLabelLoss", "build_loss", "build_model", "cam_model",
    "cell_bag_model", "create_backbone", "image_classifier", "widen_stem",
]
