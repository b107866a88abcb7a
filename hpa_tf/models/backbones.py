"""Backbones by name: ``keras.applications`` families with a four-channel input, plus a small
fast CNN for tests and the CPU demo.

``create_backbone(name, weights=...)`` returns a Keras model from a (H, W, 4) float image in
[0, 1] (red, green, blue, yellow) to a feature map. Its first layer, ``to_backbone_range``, applies
exactly the input convention keras documents for the family (0-255, then its ``preprocess_input``,
then whatever the keras model does inside), per channel:

| family | red, green, blue on [0, 1] become |
|---|---|
| EfficientNet B0-B7 | x 255 (the model rescales and normalises inside; with ImageNet weights also the extra per-channel rescaling keras adds) |
| EfficientNetV2 S, M | 255 x / 128 - 1 |
| ResNet50/101 | 255 x - the ImageNet mean in 0-255 (caffe style; the stem filters are reordered from BGR to RGB) |
| DenseNet121, ConvNeXt-Tiny | (x - ImageNet mean) / ImageNet std (torch style) |

so with the yellow filters of the stem at zero, the four-channel model computes the three-channel
keras model's features on the same RGB image (a test checks every family).

**How yellow starts**: the stem's yellow filter is the mean of its red and green filters (yellow is
red + green light), and yellow's input normalisation is the mean of red's and green's.

Weights (``weights=``):
- ``None``: random;
- ``"imagenet"``: keras' ImageNet weights (downloaded once, or found in ``~/.keras/models``);
- ``"imagenet:PATH"``: the same ImageNet weights from a local copy of keras' file (offline Kaggle
  notebooks: e.g. ``imagenet:/kaggle/input/keras-weights/efficientnetb0_notop.h5``);
- ``PATH``: a local weights file of the *three-channel* keras model, e.g. saved with
  ``keras.applications.ResNet50(include_top=False, weights=None).save_weights("r50.weights.h5")``.

To start from a four-channel hpa-tf model instead, see :func:`hpa_tf.models.checkpoints.init_from`.
"""

from __future__ import annotations

import posixpath
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])
_CAFFE_MEAN_RGB = np.array([123.68, 116.779, 103.939])  # keras' caffe mode, BGR [103.939, 116.779, 123.68]


@dataclass(frozen=True)
class Family:
    """How one keras.applications family is built and fed."""

    keras_class: str
    scale: tuple[float, float, float]  # per RGB channel, applied to [0, 1] input: x * scale + offset
    offset: tuple[float, float, float]
    extra: dict = field(default_factory=dict)
    bgr: bool = False  # the stem expects blue, green, red
    imagenet_rescale: bool = False  # keras adds Rescaling(1 / sqrt(std)) after its Normalization for ImageNet weights
    keras_file: str = ""  # keras' ImageNet weights file name, to recognise a local copy


def _torch_style(cls: str, **extra) -> Family:
    return Family(cls, tuple(1 / _IMAGENET_STD), tuple(-_IMAGENET_MEAN / _IMAGENET_STD), dict(extra))


FAMILIES: dict[str, Family] = {
    **{f"efficientnet_b{i}": Family(f"EfficientNetB{i}", (255.0,) * 3, (0.0,) * 3, imagenet_rescale=True,
                                    keras_file=f"efficientnetb{i}_notop.h5") for i in range(8)},
    "efficientnetv2_s": Family("EfficientNetV2S", (255 / 128,) * 3, (-1.0,) * 3, {"include_preprocessing": False}),
    "efficientnetv2_m": Family("EfficientNetV2M", (255 / 128,) * 3, (-1.0,) * 3, {"include_preprocessing": False}),
    "resnet50": Family("ResNet50", (255.0,) * 3, tuple(-_CAFFE_MEAN_RGB), bgr=True),
    "resnet101": Family("ResNet101", (255.0,) * 3, tuple(-_CAFFE_MEAN_RGB), bgr=True),
    "densenet121": _torch_style("DenseNet121"),
    "convnext_tiny": _torch_style("ConvNeXtTiny", include_preprocessing=False),
}
BACKBONES: tuple[str, ...] = (*FAMILIES, "small_cnn", "small_cnn_s2d")
# small_cnn is never pretrained: a fixed standardisation around the typical HPA intensity.
_SMALL_CNN_RANGE = (1 / 0.225, -0.45 / 0.225)


def small_cnn(input_shape: tuple, name: str = "small_cnn", space_to_depth: int = 1) -> keras.Model:
    """Four conv blocks (32-128 filters, batch norm, stride-2 downsampling): seconds per epoch on a CPU.

    Batch-norm momentum 0.9: its statistics settle within the few hundred steps of a CPU run.
    ``space_to_depth`` b > 1 (``small_cnn_s2d``: 2): the input's b x b pixel blocks become channels
    first (:class:`~hpa_tf.models.layers.SpaceToDepth`), so a 128 px cell costs about what a 64 px
    one costs and its fine texture reaches the first convolution whole. The side must be a multiple
    of b; 128 px with b = 2 gives the 4 x 4 map that 64 px gives without it.
    """
    from hpa_tf.models.layers import SpaceToDepth

    inputs = keras.Input(input_shape)
    x = SpaceToDepth(space_to_depth, name="space_to_depth")(inputs) if space_to_depth > 1 else inputs
    for i, filters in enumerate((32, 48, 96, 128)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}b")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}b")(x)
        x = keras.layers.Activation("relu", name=f"relu{i}b")(x)
    return keras.Model(inputs, x, name=name)


def _app(family: Family) -> Callable[..., keras.Model]:
    cls = getattr(keras.applications, family.keras_class)

    def build(input_shape: tuple, weights: str | None) -> keras.Model:
        with warnings.catch_warnings():  # four channels are the point, not a mistake
            warnings.filterwarnings("ignore", message=".*expects 1 or 3 input channels.*")
            return cls(include_top=False, weights=weights, input_shape=input_shape, **family.extra)

    return build


def with_yellow(values: np.ndarray) -> np.ndarray:
    """Per-channel RGB values plus yellow = the mean of red and green.

    >>> with_yellow(np.array([1.0, 3.0, 5.0])).tolist()
    [1.0, 3.0, 5.0, 2.0]
    """
    values = np.asarray(values, np.float64)
    return np.append(values, values[:2].mean())


def widen_stem(kernel: np.ndarray, bgr: bool = False) -> np.ndarray:
    """A (kh, kw, 3, out) kernel -> (kh, kw, 4, out) for red, green, blue, yellow inputs; the new
    yellow filter = mean of the red and green filters. ``bgr``: the kernel's inputs are blue, green,
    red (caffe-style weights) and are reordered to red, green, blue first.

    >>> widen_stem(np.ones((3, 3, 3, 8))).shape
    (3, 3, 4, 8)
    """
    if bgr:
        kernel = kernel[:, :, ::-1, :]
    yellow = kernel[:, :, 0:2, :].mean(axis=2, keepdims=True)
    return np.concatenate([kernel, yellow], axis=2)


def _copy_widened(src: keras.Model, dst: keras.Model, family: Family, imagenet: bool) -> None:
    """Copy a three-channel model's weights into its four-channel twin (stem widened)."""
    src_layers = [layer for layer in src.layers if layer.weights]
    dst_layers = [layer for layer in dst.layers if layer.weights]
    if len(src_layers) != len(dst_layers):
        raise ValueError(f"cannot map weights: {len(src_layers)} vs {len(dst_layers)} layers with weights")
    for s, d in zip(src_layers, dst_layers):
        is_input_norm = isinstance(d, keras.layers.Normalization)
        new = []
        for var, ws, wd in zip(d.weights, s.get_weights(), d.get_weights()):
            if ws.shape == wd.shape:
                new.append(ws)
            elif ws.ndim == 4 and ws.shape[2] == 3 and wd.shape[2] == 4:
                new.append(widen_stem(ws, family.bgr))
            elif ws.ndim == 1 and ws.shape[0] == 3 and wd.shape[0] == 4:  # per-channel input statistics
                if is_input_norm and imagenet and family.imagenet_rescale and "variance" in var.path:
                    # keras' ImageNet EfficientNet divides by sqrt(std) once more after normalising;
                    # the same thing, folded into the variance: (x - m) / sqrt(v * std).
                    ws = ws * _IMAGENET_STD
                new.append(with_yellow(ws).astype(ws.dtype))
            else:
                raise ValueError(f"layer {d.name}: weight {ws.shape} does not fit {wd.shape}")
        d.set_weights(new)
        if is_input_norm:
            d.finalize_state()  # Normalization computes with statistics cached from its variables


def stem_conv(model: keras.Model) -> keras.layers.Conv2D:
    """The first convolution that sees the four input channels (searched through nested models).

    >>> tuple(stem_conv(create_backbone("small_cnn", (32, 32, 4))).kernel.shape)
    (3, 3, 4, 32)
    """
    for layer in model.layers:  # in topological order; nested models are searched in place
        if isinstance(layer, keras.layers.Conv2D):
            if layer.kernel.shape[2] == 4:
                return layer
            break
        if hasattr(layer, "layers"):
            try:
                return stem_conv(layer)
            except ValueError:
                continue
    raise ValueError(f"{model.name}: its first convolution does not take four channels")


def _is_imagenet(weights: str, family: Family) -> tuple[bool, str | None]:
    """(ImageNet weights?, local file to read or None for keras' own download)."""
    if weights == "imagenet":
        return True, None
    if weights.startswith("imagenet:"):
        return True, weights.split(":", 1)[1]
    return bool(family.keras_file) and posixpath.basename(weights) == family.keras_file, weights


def _load_three_channel(name: str, family: Family, input_shape: tuple, weights: str) -> tuple[keras.Model, bool]:
    from hpa_tf import fs

    imagenet, path = _is_imagenet(weights, family)
    build = _app(family)
    three_shape = (*input_shape[:2], 3)
    if path is None:
        return build(three_shape, "imagenet"), True
    if not fs.exists(path):
        raise FileNotFoundError(f"model.weights: {path} not found (a weights file of the three-channel "
                                f"keras {family.keras_class}, 'imagenet', or 'imagenet:PATH')")
    three = build(three_shape, None)
    local = path
    if "://" in path:  # keras reads local files only: copy gs:// weights once
        import tempfile

        local = posixpath.join(tempfile.mkdtemp(), posixpath.basename(path))
        with open(local, "wb") as f:
            f.write(fs.read_bytes(path))
    try:
        three.load_weights(local)
    except Exception as err:
        raise ValueError(
            f"model.weights: {path} does not fit keras' three-channel {family.keras_class} ({err}). "
            "A four-channel hpa-tf model (.keras or .weights.h5) starts a new one with model.init_from instead"
        ) from err
    return three, imagenet


def create_backbone(name: str, input_shape: tuple = (None, None, 4), weights: str | None = None) -> keras.Model:
    """A feature extractor for four-channel images in [0, 1].

    >>> create_backbone("small_cnn", (64, 64, 4)).output.shape
    (None, 4, 4, 128)
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if name in ("small_cnn", "small_cnn_s2d"):
        core = small_cnn(input_shape, name, space_to_depth=2 if name == "small_cnn_s2d" else 1)
        if weights:
            core.load_weights(weights)
        scale, offset = (_SMALL_CNN_RANGE[0],) * 4, (_SMALL_CNN_RANGE[1],) * 4
    else:
        family = FAMILIES[name]
        core = _app(family)(input_shape, None)
        if weights:
            three, imagenet = _load_three_channel(name, family, input_shape, weights)
            _copy_widened(three, core, family, imagenet)
        scale, offset = tuple(with_yellow(family.scale)), tuple(with_yellow(family.offset))
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling([float(s) for s in scale], [float(o) for o in offset], name="to_backbone_range")(inputs)
    return keras.Model(inputs, core(x), name=name)
