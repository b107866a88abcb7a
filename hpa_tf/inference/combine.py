"""Turn the models' outputs into one score per cell and class, by a named rule.

Each model gives an image-level vector (19,) and, when it can, per-cell scores (n, 19):
- image model: the whole image -> image level; its CAM over each cell, or one cell at a time -> cell level;
- cell-bag model: its per-cell head -> cell level; its pooled head -> image level;
- single-cell model: each cell -> cell level; the best cell -> image level.

Rules (weights per model; models without a cell level are left out of the cell average):
- ``image_x_cell`` (default; 1st and 2nd place): weighted mean image score x weighted mean cell score;
- ``cell``: the weighted mean of the cell-level scores;
- ``image``: the image-level score painted on every cell (a baseline: it cannot tell cells apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpa_tf.labels import NUM_CLASSES

RULES = ("image_x_cell", "cell", "image")
CELL_VIEWS = ("masked", "centred", "cam", "none")  # how an image model scores cells (see predictor)


@dataclass
class ModelScores:
    """One model's output on one image: ``image`` (19,) and ``cells`` (n, 19) or None."""

    image: np.ndarray
    cells: np.ndarray | None


def _mean(parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    total = sum(w for w, _ in parts)
    return sum(w * p for w, p in parts) / total


def combine(scores: Sequence[ModelScores], n_cells: int, rule: str = "image_x_cell",
            weights: Sequence[float] | None = None) -> np.ndarray:
    """(n_cells, 19) scores in [0, 1].

    >>> a = ModelScores(np.full(19, 0.5), np.full((2, 19), 0.8))
    >>> float(combine([a], 2, "image_x_cell")[0, 0])
    0.4
    """
    if rule not in RULES:
        raise ValueError(f"combine rule must be one of {RULES}, not {rule!r}")
    weights = [1.0] * len(scores) if weights is None else list(weights)
    if len(weights) != len(scores):
        raise ValueError(f"{len(weights)} weights for {len(scores)} models")
    if min(weights, default=1.0) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights {weights}: each must be >= 0 and not all 0")
    if n_cells == 0:
        return np.zeros((0, NUM_CLASSES))
    image = _mean([(w, s.image) for w, s in zip(weights, scores)])
    if rule == "image":
        return np.tile(image, (n_cells, 1))
    cell_parts = [(w, s.cells) for w, s in zip(weights, scores) if s.cells is not None]
    if not cell_parts:
        raise ValueError(f"rule {rule!r} needs a model with cell-level scores (a cell-bag model, or an image "
                         "model with a cell view other than 'none')")
    cells = _mean(cell_parts)
    return cells * image if rule == "image_x_cell" else cells
