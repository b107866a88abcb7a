"""Backbones by name: ``keras.applications`` families with a four-channel input, plus a small
fast CNN for tests and the CPU demo.

``create_backbone(name, weights=...)`` returns a Keras model from a (H, W, 4) float image in
[0, 1] to a feature map; each family's own input convention is applied inside it (EfficientNet
expects 0-255 and normalises itself, EfficientNetV2 [-1, 1], the others ImageNet-style
standardisation). Weights: ``None`` (random), ``"imagenet"`` (needs the network, once), or a local file
of the *three-channel* backbone (``model.save_weights("b0.weights.h5")``). Three-channel weights
are copied layer by layer into the four-channel model; the stem's kernel is widened with the
yellow filter = the mean of the red and green filters (yellow is red + green light).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import keras
import numpy as np

# name -> (keras.applications class, extra arguments, (scale, offset) taking [0, 1] to its input range)
_STANDARDISE = (1 / 0.225, -0.45 / 0.225)
_APPS: dict[str, tuple[str, dict, tuple[float, float]]] = {
    **{f"efficientnet_b{i}": (f"EfficientNetB{i}", {}, (255.0, 0.0)) for i in range(8)},
    "efficientnetv2_s": ("EfficientNetV2S", {"include_preprocessing": False}, (2.0, -1.0)),
    "efficientnetv2_m": ("EfficientNetV2M", {"include_preprocessing": False}, (2.0, -1.0)),
    "resnet50": ("ResNet50", {}, _STANDARDISE),
    "resnet101": ("ResNet101", {}, _STANDARDISE),
    "densenet121": ("DenseNet121", {}, _STANDARDISE),
    "convnext_tiny": ("ConvNeXtTiny", {"include_preprocessing": False}, _STANDARDISE),
}
BACKBONES: tuple[str, ...] = (*_APPS, "small_cnn")


def small_cnn(input_shape: tuple, name: str = "small_cnn") -> keras.Model:
    """Four conv blocks (32-128 filters, batch norm, stride-2 downsampling): seconds per epoch on a CPU.

    Batch-norm momentum 0.9: its statistics settle within the few hundred steps of a CPU run.
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((32, 48, 96, 128)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}b")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}b")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}b")(x)
    return keras.Model(inputs, x, name=name)


def _app(name: str) -> Callable[..., keras.Model]:
    cls_name, extra, _ = _APPS[name]
    cls = getattr(keras.applications, cls_name)

    def build(input_shape: tuple, weights: str | None) -> keras.Model:
        with warnings.catch_warnings():  # four channels are the point, not a mistake
            warnings.filterwarnings("ignore", message=".*expects 1 or 3 input channels.*")
            return cls(include_top=False, weights=weights, input_shape=input_shape, **extra)

    return build


def widen_stem(kernel: np.ndarray) -> np.ndarray:
    """A (kh, kw, 3, out) kernel -> (kh, kw, 4, out), the new yellow filter = mean of red and green.

    >>> widen_stem(np.ones((3, 3, 3, 8))).shape
    (3, 3, 4, 8)
    """
    yellow = kernel[:, :, 0:2, :].mean(axis=2, keepdims=True)
    return np.concatenate([kernel, yellow], axis=2)


def _copy_widened(src: keras.Model, dst: keras.Model) -> None:
    src_layers = [layer for layer in src.layers if layer.weights]
    dst_layers = [layer for layer in dst.layers if layer.weights]
    if len(src_layers) != len(dst_layers):
        raise ValueError(f"cannot map weights: {len(src_layers)} vs {len(dst_layers)} layers with weights")
    for s, d in zip(src_layers, dst_layers):
        new = []
        for ws, wd in zip(s.get_weights(), d.get_weights()):
            if ws.shape == wd.shape:
                new.append(ws)
            elif ws.ndim == 4 and ws.shape[2] == 3 and wd.shape[2] == 4:
                new.append(widen_stem(ws))
            elif ws.ndim == 1 and ws.shape[0] == 3 and wd.shape[0] == 4:  # per-channel input statistics
                new.append(np.append(ws, ws[:2].mean()))
            else:
                raise ValueError(f"layer {d.name}: weight {ws.shape} does not fit {wd.shape}")
        d.set_weights(new)


def create_backbone(name: str, input_shape: tuple = (None, None, 4), weights: str | None = None) -> keras.Model:
    """A feature extractor for four-channel images.

    >>> create_backbone("small_cnn", (64, 64, 4)).output.shape
    (None, 4, 4, 128)
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if name == "small_cnn":
        core = small_cnn(input_shape)
        if weights:
            core.load_weights(weights)
        scale, offset = _STANDARDISE
    else:
        build = _app(name)
        core = build(input_shape, None)
        if weights:
            three = build((*input_shape[:2], 3), None if weights != "imagenet" else "imagenet")
            if weights != "imagenet":
                three.load_weights(weights)
            _copy_widened(three, core)
        scale, offset = _APPS[name][2]
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(scale, offset, name="to_backbone_range")(inputs)
    return keras.Model(inputs, core(x), name=name)
