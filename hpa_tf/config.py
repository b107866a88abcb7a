"""The experiment config: typed dataclasses (in the manner of TensorFlow Model Garden), read from
YAML files under ``configs/`` plus ``--set key=value`` overrides.

``load_config("configs/demo_cpu.yaml", ["train.epochs=3", "model.backbone=efficientnet_b4"])``
returns an :class:`ExperimentConfig`; values are parsed as YAML (``3``, ``0.1``, ``true``, ``[0, 1]``)
and checked against the field's type and range, so a typo or a wrong type is an error that names
the key and where it came from, never a silently different run. ``cfg.train.epochs`` and
``cfg["train"]["epochs"]`` both work. ``data.kind`` follows ``model.kind`` (``auto``) and may not
disagree with it. The effective config is saved next to the outputs (:func:`save_config`).

Every CLI that takes a config shares one parser: :func:`add_config_arguments` and
:func:`config_from_args`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from hpa_tf import fs

STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker", "cpu", "cpu_mirrored")
MODEL_KINDS = ("image", "cells", "cell")

# Settings added after models had been trained, at the value that means "off" (what every model trained
# before the setting existed did). A model's provenance leaves a setting out while it is off, so
# upgrading hpa-tf does not make every trained model look made from other inputs; a new on/off setting
# belongs here with its off value.
SWITCHED_OFF: dict[str, Any] = {"augment.rotate": 0.0, "augment.mixup": 0.0, "train.ema": 0.0, "data.repeat_threshold": 0.0,
                                "train.validation_freq": 1}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


class Section:
    """A config section: attribute access, plus ``section["key"]`` for code written against dicts."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self.keys():
            raise ConfigError(f"unknown key {key!r}; known keys here: {sorted(self.keys())}")
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self)]

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _choice(key: str, value: Any, options: Sequence[Any]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, options))}")


def _at_least(key: str, value: float, low: float) -> None:
    if not value >= low:  # NaN too
        raise ConfigError(f"{key}: {value!r} must be at least {low}")


@dataclass
class DataConfig(Section):
    records: str = "runs/demo/records"  # the builder's output folder (local or gs://)
    kind: str = "auto"  # image | cells | cell; auto = model.kind
    val_folds: list[int] = field(default_factory=lambda: [0])  # held out for validation; [] = none; [0, 2]: a split
    cell_labels: str | None = None  # model.kind cell: per-cell soft labels (python -m hpa_tf.pseudo); None = image labels
    cell_label_source: str = ""  # which stored source of cell_labels (cells, cam, cell, combined); "" = the chosen one
    val_sources: list[str] = field(default_factory=list)  # validate on these sources of val_folds only; [] = all
    image_size: int = 128
    cell_size: int = 64
    cells_per_bag: int = 16
    max_eval_cells: int = 64
    shuffle_buffer: int = 256  # records (images)
    cell_shuffle_buffer: int = 4096  # model.kind cell: single cells, mixed across images
    repeat_threshold: float = 0.0  # repeat factor sampling: images of classes in fewer than this share of images come up more often; 0 = off
    deterministic: bool = False
    seed: int = 0  # the shuffles and augmentations, with the epoch

    def validate(self) -> None:
        _choice("data.kind", self.kind, ("auto", *MODEL_KINDS))
        if any(f < 0 for f in self.val_folds) or len(set(self.val_folds)) < len(self.val_folds):
            raise ConfigError(f"data.val_folds: {self.val_folds!r} must be a list of distinct folds (>= 0); [] for none")
        for key in ("image_size", "cell_size"):
            _at_least(f"data.{key}", getattr(self, key), 8)
        for key in ("cells_per_bag", "max_eval_cells", "shuffle_buffer", "cell_shuffle_buffer"):
            _at_least(f"data.{key}", getattr(self, key), 1)
        if not 0.0 <= self.repeat_threshold <= 1.0:
            raise ConfigError(f"data.repeat_threshold: {self.repeat_threshold} must be in [0, 1] (a share of images; 0 = off)")


@dataclass
class AugmentConfig(Section):
    flip: bool = True
    rot90: bool = True
    rotate: float = 0.0  # free rotation: angle from U(-rotate, rotate) degrees; 0 = off, 180 = any angle
    crop_min: float = 0.75  # random resized crop: smallest side fraction; 1.0 = off
    brightness: float = 0.0  # an offset fakes signal in the dim green channel: off by default
    contrast: float = 0.2
    cutout: float = 0.0  # side of the cut-out square as a fraction of the image; 0 = off
    p_negative: float = 0.02  # green scaled by U(0, 0.1), label set to Negative (18)
    p_swap: float = 0.02  # green replaced by red (-> Microtubules, 10) or yellow (-> ER, 6)
    mixup: float = 0.0  # image and single-cell models: mixup's Beta(mixup, mixup); 0 = off, 0.2-0.4 usual

    def validate(self) -> None:
        if not 0.0 <= self.rotate <= 180.0:
            raise ConfigError(f"augment.rotate: {self.rotate} must be in [0, 180] (degrees)")
        if not 0.0 <= self.mixup <= 10.0:
            raise ConfigError(f"augment.mixup: {self.mixup} must be in [0, 10] (mixup's Beta(a, a): 0 = off, 0.2-0.4 usual)")
        if not 0.0 < self.crop_min <= 1.0:
            raise ConfigError(f"augment.crop_min: {self.crop_min} must be in (0, 1]")
        for key in ("brightness", "contrast", "cutout", "p_negative", "p_swap"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment.{key}: {value} must be in [0, 1]")


@dataclass
class ModelConfig(Section):
    kind: str = "image"  # image | cells (cell bags) | cell (one cell per example, soft labels)
    backbone: str = "small_cnn"
    weights: str | None = None  # None, "imagenet", "imagenet:PATH" (keras' file, offline), or a 3-channel weights file
    init_from: str | None = None  # a 4-channel hpa-tf checkpoint (.keras / .weights.h5) to start from
    pooling: str = "avg"  # feature map -> vector (image, or each cell): avg | gem | avgmax (cell models)
    bag_pooling: str = "max"  # cell-bag image head: max | lse | attention
    cell_loss_weight: float = 0.1
    image_loss_weight: float = 1.0
    dropout: float = 0.0
    puzzle_tiles: int = 0  # image models: Puzzle-CAM with tiles x tiles pieces (2 in the paper); 0 = off
    puzzle_cls_weight: float = 1.0  # the tiles' classification loss
    puzzle_re_weight: float = 1.0  # the reconstruction loss |CAM(image) - CAM(tiles put back)|

    def validate(self) -> None:
        from hpa_tf.models.backbones import BACKBONES

        _choice("model.kind", self.kind, MODEL_KINDS)
        _choice("model.backbone", self.backbone, BACKBONES)
        if self.backbone.startswith("small_cnn") and str(self.weights or "").split(":")[0] == "imagenet":
            raise ConfigError(f"model.weights {self.weights}: {self.backbone} has no ImageNet weights (it is hpa-tf's own "
                              "small CNN); give a weights file of it, none, or a backbone keras has ImageNet weights for")
        _choice("model.pooling", self.pooling, ("avg", "gem", "avgmax"))  # hpa_tf.models.layers.POOLINGS, without keras
        if self.pooling == "avgmax" and self.kind == "image":
            raise ConfigError("model.pooling: avgmax pools cells (model.kind cells or cell); an image model's class "
                              "activation maps need avg or gem")
        _choice("model.bag_pooling", self.bag_pooling, ("max", "lse", "attention"))  # models.cellbag.BAG_POOLINGS, without keras
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: {self.dropout} must be in [0, 1)")
        _at_least("model.puzzle_tiles", self.puzzle_tiles, 0)
        for key in ("puzzle_cls_weight", "puzzle_re_weight"):
            _at_least(f"model.{key}", getattr(self, key), 0.0)
        if self.puzzle_tiles > 1 and self.kind != "image":
            raise ConfigError(f"model.puzzle_tiles: Puzzle-CAM trains image models, not model.kind={self.kind}")


@dataclass
class LossConfig(Section):
    kind: str = "bce"  # bce | focal
    gamma: float = 2.0
    class_weights: list[float] | None = None  # 19 values

    def validate(self) -> None:
        _choice("loss.kind", self.kind, ("bce", "focal"))
        if self.class_weights is not None and len(self.class_weights) != 19:
            raise ConfigError(f"loss.class_weights: {len(self.class_weights)} values, need one per class (19)")


@dataclass
class TrainConfig(Section):
    model_dir: str = "runs/demo/model"
    strategy: str = "auto"  # auto | tpu | mirrored | multi_worker | cpu | cpu_mirrored
    logical_cpus: int = 0  # > 1 with cpu_mirrored: split the CPU into replicas (tests, demos)
    mixed_precision: str = "auto"  # auto | bfloat16 | float16 | off
    jit_compile: bool = False  # XLA-compile the train and validation steps (TPUs always compile)
    batch_size: int = 8  # per replica
    epochs: int = 4
    steps_per_epoch: int = 0  # 0 = training images / global batch
    steps_per_execution: int = 1  # training steps per host call, under every strategy
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    ema: float = 0.0  # weight averaging: momentum of the weights' moving average (0.99-0.999); it validates and is saved; 0 = off
    warmup_epochs: float = 0.5
    keep_backups: int = 2  # epoch backups kept for resuming
    # validate after every N-th epoch and after the last one; 0: after the last one only (best.keras is then
    # the last epoch's). A model that only labels held-out images needs no epoch chosen for it
    validation_freq: int = 1
    tensorboard: bool = True
    seed: int = 0  # the initial weights (data.seed: the shuffles and augmentations)
    deterministic: bool = False  # the same run twice gives the same weights (op determinism; may be slower on GPUs)

    def validate(self) -> None:
        _choice("train.strategy", self.strategy, STRATEGIES)
        _choice("train.mixed_precision", self.mixed_precision, ("auto", "bfloat16", "float16", "off"))
        for key in ("batch_size", "epochs", "steps_per_execution", "keep_backups"):
            _at_least(f"train.{key}", getattr(self, key), 1)
        for key in ("steps_per_epoch", "logical_cpus", "weight_decay", "warmup_epochs", "validation_freq"):
            _at_least(f"train.{key}", getattr(self, key), 0)
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"train.ema: {self.ema} must be in [0, 1) (0 = off; 0.99 averages about the last 100 steps)")
        if not self.learning_rate > 0:  # NaN too
            raise ConfigError(f"train.learning_rate: {self.learning_rate} must be above 0")


@dataclass
class ExperimentConfig(Section):
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> ExperimentConfig:
        """Check every section and the rules across sections; returns self."""
        for name in self.keys():
            getattr(self, name).validate()
        if self.model.backbone == "small_cnn_s2d":
            key = "data.image_size" if self.model.kind == "image" else "data.cell_size"
            size = self.data.image_size if self.model.kind == "image" else self.data.cell_size
            if size % 2:
                raise ConfigError(f"{key}: {size} px cannot feed model.backbone=small_cnn_s2d, whose stem takes 2 x 2 "
                                  f"pixel blocks; use an even size such as {size + 1}")
            tiles = self.model.puzzle_tiles
            if self.model.kind == "image" and tiles > 1 and size % (2 * tiles):
                raise ConfigError(f"data.image_size: {size} px in {tiles} x {tiles} Puzzle-CAM tiles gives tiles of an odd "
                                  f"size, which small_cnn_s2d's 2 x 2 stem cannot take; use a multiple of {2 * tiles}")
        if self.augment.mixup > 0 and self.model.kind == "cells":
            raise ConfigError("augment.mixup: mixup mixes the examples of image and single-cell models (model.kind image "
                              "or cell); a cell bag's cells share their image's labels, so it has nothing to mix: "
                              "leave augment.mixup at 0 for model.kind cells")
        if self.data.kind == "auto":
            self.data.kind = self.model.kind
        elif self.data.kind != self.model.kind:
            raise ConfigError(f"data.kind={self.data.kind} disagrees with model.kind={self.model.kind}: "
                              f"set both (or leave data.kind: auto)")
        return self


DEFAULTS: dict[str, Any] = ExperimentConfig().to_dict()


def _type_name(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if annotation in names:
        return names[annotation]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return f"a list of {_type_name(args[0]).replace('an ', '').replace('a ', '')}s"
    if type(None) in typing.get_args(annotation):
        return f"{_type_name(args[0])} or null"
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    return str(annotation)


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """``value`` as the field's type, or a ConfigError naming the key and where the value came from."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        for member in members[:-1]:
            try:
                return _coerce(value, member, key, where)
            except ConfigError:
                pass
        try:
            return _coerce(value, members[-1], key, where)
        except ConfigError:
            raise ConfigError(f"{where}: {key} must be {_type_name(annotation)}, got {value!r}") from None
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be {_type_name(annotation)}, got {value!r}")
        return [_coerce(v, args[0], key, where) for v in value]
    if annotation is str and isinstance(value, bool):
        value = "on" if value else "off"  # YAML 1.1 reads off/no/false as False: the switch's spelling
    if annotation is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(annotation, True)
    if not ok:
        raise ConfigError(f"{where}: {key} must be {_type_name(annotation)}, got {value!r} ({type(value).__name__})")
    return float(value) if annotation is float else value


def _val_fold(value: Any) -> Any:
    """The old ``data.val_fold`` (one fold, -1 for none, or a list) as ``data.val_folds``."""
    if isinstance(value, list):
        return value
    return [] if value == -1 else [value]


# Old names that still work: key -> (its new name, the value's conversion).
ALIASES: dict[str, tuple[str, Any]] = {"data.val_fold": ("val_folds", _val_fold)}


def _apply(config: Section, update: dict, where: str, path: str = "") -> None:
    hints = typing.get_type_hints(type(config))
    for key, value in update.items():
        full = f"{path}{key}"
        if full in ALIASES:
            key, convert = ALIASES[full]
            value = convert(value) if convert else value
            full = f"{path}{key}"
        if key not in config.keys():
            raise ConfigError(f"{where}: unknown key {full!r}; known keys here: {sorted(config.keys())}")
        current = getattr(config, key)
        if isinstance(current, Section):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {full!r} is a section, got {value!r}")
            _apply(current, value, where, f"{full}.")
        else:
            setattr(config, key, _coerce(value, hints[key], full, where))


def parse_value(raw: str) -> Any:
    """A command-line value parsed as YAML: ``parse_value("3")`` -> 3, ``"[a, b]"`` -> ['a', 'b'].

    >>> parse_value("0.5"), parse_value("true"), parse_value("gs://b/x")
    (0.5, True, 'gs://b/x')
    """
    return yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str], flag: str = "--set") -> ExperimentConfig:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a copy and validate it; errors
    name ``flag``, the option that gave them.

    >>> apply_overrides(ExperimentConfig(), ["train.epochs=2"]).train.epochs
    2
    """
    out = _from_dict(config.to_dict())
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{flag} {item!r}: expected key=value, e.g. train.epochs=3")
        update: Any = parse_value(raw)
        for part in reversed(key.strip().split(".")):
            update = {part: update}
        _apply(out, update, f"{flag} {item}")
    return out.validate()


def _from_dict(values: dict) -> ExperimentConfig:
    config = ExperimentConfig()
    _apply(config, values, "config")
    return config


SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_configs() -> list[str]:
    """Names of the configs that come with hpa-tf (``configs/`` in a checkout, inside the package
    when installed). ``shipped_configs()`` -> ['demo_cpu.yaml', ...]"""
    return sorted(n for n in os.listdir(SHIPPED) if n.endswith(".yaml"))


def resolve_config(path: str) -> str:
    """``path`` if it exists, else the shipped config of that name (``tpu_image_b0`` or
    ``configs/tpu_image_b0.yaml`` work from any folder, e.g. a notebook after ``pip install``)."""
    if fs.exists(path):
        return path
    name = os.path.basename(path)
    name = name if name.endswith(".yaml") else f"{name}.yaml"
    if name in shipped_configs():
        return os.path.join(SHIPPED, name)
    raise ConfigError(f"{path}: no such config file; the shipped ones are {', '.join(shipped_configs())}")


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Defaults, then the YAML file, then the overrides, validated.

    >>> load_config(None, ["model.backbone=resnet50"]).model.backbone
    'resnet50'
    """
    config = ExperimentConfig()
    if path:
        path = resolve_config(path)
        try:
            loaded = yaml.safe_load(fs.read_text(path)) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        _apply(config, loaded, path)
    return apply_overrides(config, overrides)


def save_config(config: ExperimentConfig, path: str) -> None:
    """Write the effective config as YAML. ``save_config(cfg, "runs/x/config.yaml")``"""
    fs.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config FILE`` and ``--set KEY=VALUE ...``: the config arguments of every hpa-tf CLI."""
    parser.add_argument("--config", required=required,
                        help="a YAML file, or the name of a shipped one (configs/: demo_cpu, tpu_image_b0, ...)")
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. --set train.epochs=3 model.backbone=efficientnet_b0 (repeatable)")


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config the parsed ``--config``/``--set`` arguments describe."""
    return load_config(args.config, args.set)
