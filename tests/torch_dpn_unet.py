"""A PyTorch reference of the official ``DPNUnet`` for tests: written here in the style of the
original classes (``haoxusci/pytorch_zoo``: ``DPNUnet``, ``DualPathBlock``, ``BnActConv2d``,
``CatBnAct``, ``UnetDecoderBlock``, ``ConvBottleneck``), with the same module names, so its
``state_dict`` has the official files' names, and pickled under the official classes' module paths
(``pytorch_zoo.unet.DPNUnet``...) so that a file written from it looks like the official ones.
Any size: the tests use a small configuration of the same architecture.
"""

from __future__ import annotations

import sys
import types

import torch
from torch import nn

RELU = nn.ReLU(inplace=True)  # as in the original, one activation module shared by the encoder's blocks


class BnActConv2d(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int = 0, groups: int = 1):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs, eps=0.001)
        self.act = RELU
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, x):
        return self.conv(self.act(self.bn(x)))


class CatBnAct(nn.Module):
    def __init__(self, in_chs: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs, eps=0.001)
        self.act = RELU

    def forward(self, x):
        return self.act(self.bn(torch.cat(x, dim=1) if isinstance(x, tuple) else x))


class DualPathBlock(nn.Module):
    def __init__(self, in_chs: int, r: int, width: int, inc: int, groups: int, kind: str):
        super().__init__()
        self.width, self.kind = width, kind
        if kind == "proj":
            self.c1x1_w_s1 = BnActConv2d(in_chs, width + 2 * inc, 1, 1)
        elif kind == "down":
            self.c1x1_w_s2 = BnActConv2d(in_chs, width + 2 * inc, 1, 2)
        self.c1x1_a = BnActConv2d(in_chs, r, 1, 1)
        self.c3x3_b = BnActConv2d(r, r, 3, 2 if kind == "down" else 1, padding=1, groups=groups)
        self.c1x1_c = BnActConv2d(r, width + inc, 1, 1)

    def forward(self, x):
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        if self.kind == "normal":
            s1, s2 = x
        else:
            s = (self.c1x1_w_s1 if self.kind == "proj" else self.c1x1_w_s2)(x_in)
            s1, s2 = s[:, : self.width], s[:, self.width :]
        y = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        return s1 + y[:, : self.width], torch.cat([s2, y[:, self.width :]], dim=1)


class UnetDecoderBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.layer = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                   nn.ReLU(inplace=True))

    def forward(self, x):
        return self.layer(x)


class ConvBottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, dec, enc):
        return self.seq(torch.cat([dec, enc], dim=1))


class DPNUnet(nn.Module):
    """DPN encoder + U-Net decoder; the official one is ``DPNUnet()`` (DPN-92, 3 classes)."""

    def __init__(self, target_channel_num: int = 3, input_channel_num: int = 3, num_init_features: int = 64,
                 k_r: int = 96, groups: int = 32, k_sec=(3, 4, 20, 3), inc_sec=(16, 32, 24, 128),
                 widths=(256, 512, 1024, 2048)):
        super().__init__()
        filters = [num_init_features] + [w + (k + 2) * i for w, k, i in zip(widths, k_sec, inc_sec)]
        self.bottlenecks = nn.ModuleList([ConvBottleneck(f * 2, f) for f in reversed(filters[:-1])])
        self.decoder_stages = nn.ModuleList([UnetDecoderBlock(filters[i], filters[i - 1]) for i in range(1, len(filters))])
        self.last_upsample = UnetDecoderBlock(filters[0], filters[0])
        self.final = nn.Sequential(nn.Conv2d(filters[0], target_channel_num, 3, padding=1))
        stages = [nn.Sequential(nn.Conv2d(input_channel_num, num_init_features, 7, 2, 3, bias=False),
                                nn.BatchNorm2d(num_init_features, eps=0.001), RELU)]
        in_chs = num_init_features
        for s, (width, k, inc) in enumerate(zip(widths, k_sec, inc_sec)):
            r = k_r * width // widths[0]
            blocks = [nn.MaxPool2d(3, stride=2, padding=1)] if s == 0 else []
            blocks.append(DualPathBlock(in_chs, r, width, inc, groups, "proj" if s == 0 else "down"))
            in_chs = width + 3 * inc
            for _ in range(1, k):
                blocks.append(DualPathBlock(in_chs, r, width, inc, groups, "normal"))
                in_chs += inc
            if s == len(widths) - 1:
                blocks.append(CatBnAct(in_chs))
            stages.append(nn.Sequential(*blocks))
        self.encoder_stages = nn.ModuleList(stages)

    def forward(self, x):
        enc = []
        for stage in self.encoder_stages:
            x = stage(x)
            enc.append(torch.cat(x, dim=1) if isinstance(x, tuple) else x.clone())
        for idx, bottleneck in enumerate(self.bottlenecks):
            x = self.decoder_stages[-(idx + 1)](x)
            x = bottleneck(x, enc[-(idx + 2)])
        return self.final(self.last_upsample(x))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine terms too (a fresh network's are 0 and 1), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def calibrate(model: nn.Module, size: int = 128, seed: int = 0) -> nn.Module:
    """Batch-norm statistics set to those of one random batch (as training would leave them), so that
    activations keep a trained network's scale through the 30 blocks instead of growing; eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.randn((2, model.encoder_stages[0][0].in_channels, size, size), generator=g))
    return model.eval()


OFFICIAL_PATHS = {"DPNUnet": "pytorch_zoo.unet", "DualPathBlock": "pytorch_zoo.dpn", "BnActConv2d": "pytorch_zoo.dpn",
                  "CatBnAct": "pytorch_zoo.dpn", "UnetDecoderBlock": "pytorch_zoo.abstract_model",
                  "ConvBottleneck": "pytorch_zoo.abstract_model"}


def as_official_classes() -> None:
    """Make pickle name these classes by the official module paths (``pytorch_zoo.unet.DPNUnet``...)."""
    sys.modules.setdefault("pytorch_zoo", types.ModuleType("pytorch_zoo"))
    for name, module in OFFICIAL_PATHS.items():
        mod = sys.modules.setdefault(module, types.ModuleType(module))
        cls = globals()[name]
        cls.__module__ = module
        setattr(mod, name, cls)
