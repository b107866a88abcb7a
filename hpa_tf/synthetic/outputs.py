"""What a segmentation network would output for a SynthHPA image: the background / border /
interior maps (0-255, H x W x 3) of HPA-Cell-Segmentation's networks, made from the true instance
labels at the network's resolution, soft and noisy. For tests and benchmarks of the official
segmenter's post-processing, which cannot ship its real models."""

from __future__ import annotations

import cv2
import numpy as np


def network_outputs(labels: np.ndarray, side: int, seed: int = 0) -> np.ndarray:
    """The maps at ``side`` x ``side`` px for an instance label image (channel 0 is zero, as the
    official tool leaves it).

    >>> lab = np.zeros((64, 64), np.uint16); lab[10:40, 10:40] = 1
    >>> network_outputs(lab, 32).shape
    (32, 32, 3)
    """
    small = cv2.resize(labels, (side, side), interpolation=cv2.INTER_NEAREST)
    edges = (cv2.morphologyEx(small, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0).astype(np.float32)
    rng = np.random.default_rng(seed)
    interior = np.clip(cv2.GaussianBlur((small > 0) * (1 - edges), (0, 0), 1.5) + rng.normal(0, 0.03, edges.shape), 0, 1)
    border = np.clip(cv2.GaussianBlur(edges, (0, 0), 1.0) * 1.5 + rng.normal(0, 0.02, edges.shape), 0, 1)
    maps = np.stack([np.clip(1 - interior - border, 0, 1), border, interior], -1)
    out = np.rint(maps / maps.sum(-1, keepdims=True) * 255).astype(np.uint8)
    out[..., 0] = 0
    return out
