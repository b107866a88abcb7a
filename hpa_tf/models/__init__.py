"""Models: backbones by name, the image classifier (with CAM x cell scoring and Puzzle-CAM), the
cell-bag model, the single-cell model, losses; ``build_model(config)``."""

from __future__ import annotations

import keras

from hpa_tf.models.backbones import BACKBONES, create_backbone, widen_stem
from hpa_tf.models.cam import CamScorer, mask_weights
from hpa_tf.models.cell import cell_model
from hpa_tf.models.cellbag import cell_bag_model
from hpa_tf.models.checkpoints import backbone_of, init_from, load_model, read_contract
from hpa_tf.models.classifier import cam_model, image_classifier
from hpa_tf.models.layers import GeM, MaskedAttentionPool, MaskedBagPool
from hpa_tf.models.losses import MultiLabelLoss


def build_model(config: dict, contract=None) -> keras.Model:
    """The model a config describes (``model.kind`` image, cells or cell), started from ``model.weights``
    (three-channel pretrained) or ``model.init_from`` (a four-channel hpa-tf checkpoint). Built from
    its arguments alone (no records are read): ``contract`` is the
    :class:`~hpa_tf.data.contract.InputContract` the model carries, as training passes it
    (``InputContract.from_config(config)``, from the records); None builds a model without one,
    whose inputs prediction cuts at the model's own size.

    >>> build_model(load_config("demo_cpu"), InputContract.from_config(cfg))  # doctest: +SKIP
    """
    m, d = config["model"], config["data"]
    weights = None if m["init_from"] else m["weights"]  # no download for weights that are replaced anyway
    contract = contract.to_dict() if hasattr(contract, "to_dict") else contract
    if m["kind"] == "cells":
        model = cell_bag_model(m["backbone"], d["cell_size"], None, weights, m["bag_pooling"], m["dropout"], m["pooling"],
                               contract)
    elif m["kind"] == "image":
        model = image_classifier(m["backbone"], d["image_size"], weights, m["pooling"], m["dropout"], contract,
                                 any_size_backbone=m["puzzle_tiles"] > 1)
    elif m["kind"] == "cell":
        model = cell_model(m["backbone"], d["cell_size"], weights, m["pooling"], m["dropout"], contract)
    else:
        raise ValueError(f"model.kind must be 'image', 'cells' or 'cell', not {m['kind']!r}")
    if m["init_from"]:
        copied = init_from(model, m["init_from"])
        print(f"model.init_from {m['init_from']}: copied {', '.join(copied)}")
    return model


def contract_of(model: keras.Model):
    """The :class:`~hpa_tf.data.contract.InputContract` a trained model carries, or None."""
    from hpa_tf.data.contract import InputContract

    for layer in model._flatten_layers(include_self=False, recursive=False):
        if layer.name == "input_contract":
            return InputContract.from_dict(layer.contract)
    return None


def build_loss(config: dict) -> MultiLabelLoss:
    """The loss of a config's ``loss`` section."""
    spec = config["loss"]
    return MultiLabelLoss(spec["kind"], spec["gamma"], spec["class_weights"])


__all__ = [
    "BACKBONES", "CamScorer", "GeM", "MaskedAttentionPool", "MaskedBagPool", "MultiLabelLoss", "backbone_of", "build_loss", "build_model",
    "cam_model", "cell_bag_model", "cell_model", "mask_weights", "contract_of", "create_backbone", "image_classifier", "init_from", "load_model", "read_contract", "widen_stem",
]
