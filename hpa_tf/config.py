"""Configs: YAML files under ``configs/`` plus ``--set key=value`` overrides.

A config is a nested dict read from YAML, with dotted overrides (``--set train.epochs=3
--set model.backbone=efficientnet_b4``); values are parsed as YAML, so ``3``, ``0.1``, ``true``
and ``[0, 1]`` keep their types. Unknown keys are an error that names the key and the file, so a
typo never silently trains the wrong thing. The effective config is saved next to the outputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import yaml

from hpa_tf import fs

DEFAULTS: dict[str, Any] = {
    "data": {
        "records": "runs/demo/records",
        "kind": "image",  # image | cells
        "val_fold": 0,  # the fold held out for validation; -1 = none
        "val_sources": [],  # validate on these sources' images of val_fold only (others train); [] = all
        "image_size": 128,
        "cell_size": 64,
        "cells_per_bag": 16,
        "max_eval_cells": 64,
        "shuffle_buffer": 256,
        "deterministic": False,
        "seed": 0,
    },
    "augment": {
        "flip": True,
        "rot90": True,
        "crop_min": 0.75,  # random resized crop: smallest side fraction; 1.0 = off
        "brightness": 0.0,  # an offset fakes signal in the dim green channel: off by default
        "contrast": 0.2,
        "cutout": 0.0,  # side of the cut-out square as a fraction of the image; 0 = off
        "p_negative": 0.02,  # green scaled by U(0, 0.1), label set to Negative (18)
        "p_swap": 0.02,  # green replaced by red (-> Microtubules, 10) or yellow (-> ER, 6)
    },
    "model": {
        "kind": "image",  # image | cells
        "backbone": "small_cnn",
        "weights": None,  # None, "imagenet", "imagenet:PATH" (keras' file, offline), or a 3-channel weights file
        "init_from": None,  # a 4-channel hpa-tf checkpoint (.keras / .weights.h5) to start from; overrides weights
        "pooling": "avg",  # feature map -> vector (image, or each cell): avg | gem
        "bag_pooling": "max",  # cell-bag image head: max | lse
        "cell_loss_weight": 0.1,
        "image_loss_weight": 1.0,
        "dropout": 0.0,
    },
    "loss": {"kind": "bce", "gamma": 2.0, "class_weights": None},
    "train": {
        "model_dir": "runs/demo/model",
        "strategy": "auto",  # auto | tpu | mirrored | multi_worker | cpu | cpu_mirrored
        "logical_cpus": 0,  # > 1 with cpu_mirrored: split the CPU into replicas (tests, demos)
        "mixed_precision": "auto",  # auto | bfloat16 | float16 | off
        "batch_size": 8,  # per replica
        "epochs": 4,
        "steps_per_epoch": 0,  # 0 = training images / global batch
        "steps_per_execution": 1,
        "learning_rate": 2e-3,
        "weight_decay": 1e-4,
        "warmup_epochs": 0.5,
        "seed": 0,  # weights and augmentations (keras.utils.set_random_seed)
        "deterministic": False,  # the same run twice gives the same weights (op determinism; may be slower on GPUs)
    },
}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _merge(base: dict, update: dict, where: str, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        full = f"{path}{key}"
        if key not in out:
            raise ConfigError(f"{where}: unknown key {full!r}; known keys here: {sorted(out)}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {full!r} is a section, got {value!r}")
            out[key] = _merge(out[key], value, where, f"{full}.")
        else:
            out[key] = value
    return out


def apply_overrides(config: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML).

    >>> apply_overrides(DEFAULTS, ["train.epochs=2"])["train"]["epochs"]
    2
    """
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
        update: Any = yaml.safe_load(raw) if raw.strip() else None
        for part in reversed(key.strip().split(".")):
            update = {part: update}
        out = _merge(out, update, f"--set {item}")
    return out


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> dict:
    """Defaults, then the YAML file, then the overrides.

    >>> load_config(None, ["model.backbone=resnet50"])["model"]["backbone"]
    'resnet50'
    """
    config = copy.deepcopy(DEFAULTS)
    if path:
        loaded = yaml.safe_load(fs.read_text(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        config = _merge(config, loaded, path)
    return apply_overrides(config, overrides)


def save_config(config: dict, path: str) -> None:
    """Write the effective config as YAML. ``save_config(cfg, "runs/x/config.yaml")``"""
    fs.write_text(path, yaml.safe_dump(config, sort_keys=False))
