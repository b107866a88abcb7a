"""The one interface every segmentation backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Segmentation:
    """Instance masks of one image at its own resolution (uint16, 0 = background).

    Nucleus ``k`` (when a backend can tell) lies in cell ``k``; cells are numbered 1..n.
    """

    nuclei: np.ndarray
    cells: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.cells.max(initial=0))

    def border_cells(self) -> np.ndarray:
        """IDs of the cells that touch the image border. ``seg.border_cells()`` -> ``array([3, 9])``"""
        return border_cells(self.cells)


def border_cells(cells: np.ndarray) -> np.ndarray:
    """IDs of the instances of a label image that touch its border.

    >>> lab = np.zeros((5, 5), np.uint16); lab[0, 1] = 1; lab[2, 2] = 2
    >>> border_cells(lab).tolist()
    [1]
    """
    edge = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
    ids = np.unique(edge)
    return ids[ids != 0]


def empty_segmentation(shape: tuple[int, int]) -> Segmentation:
    """No cells: what an image without any nucleus gets."""
    return Segmentation(np.zeros(shape, np.uint16), np.zeros(shape, np.uint16))


class Segmenter(Protocol):
    """Turns 4-channel images (HxWx4, red, green, blue, yellow) into :class:`Segmentation`."""

    name: str

    def segment(self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None) -> list[Segmentation]:
        """Segment a batch; ``image_ids`` matter only to backends that read precomputed masks."""
        ...
