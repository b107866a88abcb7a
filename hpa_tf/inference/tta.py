"""Test-time augmentation: the dihedral transforms of a batch (N, H, W, C) of square images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TTA_MODES = ("none", "flip", "d4")


def transforms(mode: str) -> list[Callable[[np.ndarray], np.ndarray]]:
    """``none``: identity; ``flip``: identity and left-right flip; ``d4``: the 8 rotations x flips.

    >>> [t(np.arange(4).reshape(1, 2, 2, 1))[0, 0, :, 0].tolist() for t in transforms("flip")]
    [[0, 1], [1, 0]]
    """
    if mode == "none":
        return [lambda x: x]
    if mode == "flip":
        return [lambda x: x, lambda x: x[:, :, ::-1]]
    if mode == "d4":
        out = []
        for k in range(4):
            out.append(lambda x, k=k: np.rot90(x, k, axes=(1, 2)))
            out.append(lambda x, k=k: np.rot90(x[:, :, ::-1], k, axes=(1, 2)))
        return out
    raise ValueError(f"tta must be one of {TTA_MODES}, not {mode!r}")
