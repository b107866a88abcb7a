"""The official HPA segmentation network (``pytorch_zoo.unet.DPNUnet``) as a Keras model.

A DPN-92 encoder (dual path blocks: a residual path of ``width`` channels and a densely growing path,
``inc`` channels more per block, pre-activation batch norm with eps 1e-3, grouped 3 x 3 convolutions)
and a U-Net decoder: at each level a 2x nearest upsampling (torch's ``nn.Upsample(scale_factor=2)``),
a 3 x 3 convolution and ReLU, then the encoder's features of that level concatenated after it and a
3 x 3 convolution + ReLU; a last upsampling to the input size and a 3 x 3 convolution to the classes
(background, border, interior), here followed by the softmax the official caller applies.

Every Keras layer with weights is named as the torch module it stands for
(``encoder_stages.2.1.c3x3_b.conv``), so converting a file is a walk over names
(:mod:`hpa_tf.segmentation.official.convert`). Read from the architecture of ``haoxusci/pytorch_zoo``
(``unet.py``, ``abstract_model.py``, ``dpn.py``); written anew.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras

BN_EPSILON = 1e-3  # pytorch_zoo.dpn's BatchNorm2d(..., eps=0.001), all of the network's batch norms


@dataclass(frozen=True)
class DPNUnetConfig:
    """The network's hyper-parameters. The defaults are the official ``DPNUnet(3, 3)`` with the DPN-92
    encoder: ``num_init_features=64, k_r=96, groups=32, k_sec=(3, 4, 20, 3), inc_sec=(16, 32, 24, 128)``.

    ``widths``: the residual path's channels per stage (DPN-92: 64, 128, 256, 512 times 4); the
    bottleneck of stage i has ``k_r * widths[i] // widths[0]`` channels in ``groups`` groups.
    """

    num_init_features: int = 64
    k_r: int = 96
    groups: int = 32
    k_sec: tuple[int, ...] = (3, 4, 20, 3)
    inc_sec: tuple[int, ...] = (16, 32, 24, 128)
    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    classes: int = 3
    input_channels: int = 3

    def bottleneck(self, stage: int) -> int:
        """Channels of the grouped 3 x 3 convolution in stage ``stage`` (0-3)."""
        return self.k_r * self.widths[stage] // self.widths[0]

    def filters(self) -> list[int]:
        """Channels of the five encoder outputs (DPN-92: 64, 336, 704, 1552, 2688)."""
        return [self.num_init_features] + [w + (k + 2) * inc for w, k, inc in zip(self.widths, self.k_sec, self.inc_sec)]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> DPNUnetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@keras.saving.register_keras_serializable(package="hpa_tf")
class ChannelSlice(keras.layers.Layer):
    """Channels ``[start, stop)`` of an NHWC tensor (the split of a dual path block's output)."""

    def __init__(self, start: int, stop: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = start, stop

    def call(self, x):
        return x[..., self.start : self.stop]

    def compute_output_shape(self, shape):
        stop = shape[-1] if self.stop is None else self.stop
        return (*shape[:-1], None if shape[-1] is None and self.stop is None else stop - self.start)

    def get_config(self) -> dict:
        return {**super().get_config(), "start": self.start, "stop": self.stop}


def _conv(x, filters: int, kernel: int, stride: int, name: str, groups: int = 1, bias: bool = False, init: str = "glorot_uniform"):
    """torch's Conv2d(padding=kernel // 2): symmetric zero padding, then a valid convolution."""
    pad = kernel // 2
    if pad and stride == 1:
        return keras.layers.Conv2D(filters, kernel, padding="same", groups=groups, use_bias=bias, kernel_initializer=init,
                                   name=name)(x)
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=name + ".pad")(x)
    return keras.layers.Conv2D(filters, kernel, strides=stride, groups=groups, use_bias=bias, kernel_initializer=init,
                               name=name)(x)


def _bn_act_conv(x, filters: int, kernel: int, stride: int, name: str, init: str, groups: int = 1):
    """pytorch_zoo's BnActConv2d: batch norm, ReLU, convolution without bias."""
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name + ".bn")(x)
    x = keras.layers.ReLU(name=name + ".act")(x)
    return _conv(x, filters, kernel, stride, name + ".conv", groups, init=init)


def _join(x, name: str):
    return x if not isinstance(x, tuple) else keras.layers.Concatenate(name=name)(list(x))


def _dual_path_block(x, cfg: DPNUnetConfig, stage: int, kind: str, name: str, init: str):
    """One DualPathBlock: ``kind`` 'proj' (first block of stage 1), 'down' (first of the others,
    stride 2) or 'normal'. ``x``: a tensor or the (residual, dense) pair; returns the pair."""
    width, inc, r = cfg.widths[stage], cfg.inc_sec[stage], cfg.bottleneck(stage)
    x_in = _join(x, name + ".in")
    stride = 2 if kind == "down" else 1
    if kind == "normal":
        resid, dense = x
    else:
        proj = _bn_act_conv(x_in, width + 2 * inc, 1, stride, f"{name}.c1x1_w_s{stride}", init)
        resid, dense = ChannelSlice(0, width, name=name + ".s1")(proj), ChannelSlice(width, None, name=name + ".s2")(proj)
    y = _bn_act_conv(x_in, r, 1, 1, name + ".c1x1_a", init)
    y = _bn_act_conv(y, r, 3, stride, name + ".c3x3_b", init, groups=cfg.groups)
    y = _bn_act_conv(y, width + inc, 1, 1, name + ".c1x1_c", init)
    out1, out2 = ChannelSlice(0, width, name=name + ".out1")(y), ChannelSlice(width, None, name=name + ".out2")(y)
    return (keras.layers.Add(name=name + ".resid")([resid, out1]),
            keras.layers.Concatenate(name=name + ".dense")([dense, out2]))


def _encoder(x, cfg: DPNUnetConfig, init: str) -> list:
    """The five encoder outputs (strides 2, 4, 8, 16, 32), as tensors."""
    x = _conv(x, cfg.num_init_features, 7, 2, "encoder_stages.0.0", init=init)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="encoder_stages.0.1")(x)
    x = keras.layers.ReLU(name="encoder_stages.0.2")(x)
    outputs = [x]
    # MaxPool2d(3, stride 2, padding 1) pads with -inf; after the ReLU zeros pad the same
    x = keras.layers.ZeroPadding2D(1, name="encoder_stages.1.0.pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="encoder_stages.1.0")(x)
    for stage, blocks in enumerate(cfg.k_sec):
        first = 1 if stage == 0 else 0  # stage 1 starts with the pool
        for i in range(blocks):
            kind = "normal" if i else ("proj" if stage == 0 else "down")
            x = _dual_path_block(x, cfg, stage, kind, f"encoder_stages.{stage + 1}.{first + i}", init)
        if stage == len(cfg.k_sec) - 1:  # CatBnAct
            name = f"encoder_stages.{stage + 1}.{first + blocks}"
            x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=name + ".bn")(_join(x, name + ".in"))
            x = keras.layers.ReLU(name=name + ".act")(x)
            outputs.append(x)
        else:
            outputs.append(_join(x, f"encoder_stages.{stage + 1}.out"))
    return outputs


def _up_conv(x, filters: int, name: str, init: str):
    """UnetDecoderBlock: nearest 2x upsampling, 3 x 3 convolution with bias, ReLU."""
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name=name + ".layer.0")(x)
    x = _conv(x, filters, 3, 1, name + ".layer.1", bias=True, init=init)
    return keras.layers.ReLU(name=name + ".layer.2")(x)


def build_network(cfg: DPNUnetConfig | None = None, name: str = "dpn_unet", random_init: bool = True) -> keras.Model:
    """The network: (B, H, W, input_channels) float32, H and W multiples of 32, normalised as the
    official code does -> softmax (B, H, W, classes). ``cfg``: the official by default. Random
    weights, or zeros with ``random_init=False`` (faster, for weights about to be loaded)."""
    cfg = cfg or DPNUnetConfig()
    init = "glorot_uniform" if random_init else "zeros"
    filters = cfg.filters()
    inputs = keras.Input((None, None, cfg.input_channels), name="image")
    enc = _encoder(inputs, cfg, init)
    x = enc[-1]
    levels = len(filters) - 1
    for i in range(levels):  # decoder_stages[-1] first; bottlenecks[0] first
        level = levels - i
        x = _up_conv(x, filters[level - 1], f"decoder_stages.{level - 1}", init)
        x = keras.layers.Concatenate(name=f"bottlenecks.{i}.cat")([x, enc[level - 1]])
        x = _conv(x, filters[level - 1], 3, 1, f"bottlenecks.{i}.seq.0", bias=True, init=init)
        x = keras.layers.ReLU(name=f"bottlenecks.{i}.seq.1")(x)
    x = _up_conv(x, filters[0], "last_upsample", init)
    x = _conv(x, cfg.classes, 3, 1, "final.0", bias=True, init=init)
    out = keras.layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return keras.Model(inputs, out, name=name)
