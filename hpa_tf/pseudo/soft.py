"""From a model's cell probabilities to soft per-cell labels, within the image's labels.

An image label says that at least one of its cells shows the class, not which. A cell's soft label
for each of its image's classes is the models' probability for that cell, divided by the highest
probability of that class among the image's cells (``normalise``: the best cell of each class gets
1, the others their share; the 3rd place normalised its CAMs per image the same way); the classes the
image does not have are 0. Negative is the chance that the cell shows none of its image's classes,
prod(1 - label); an image labelled Negative gives Negative to all of its cells.
"""

from __future__ import annotations

import numpy as np

from hpa_tf.labels import NEGATIVE, NUM_CLASSES


def soft_labels(probs: np.ndarray, image_labels: np.ndarray, normalise: bool = True) -> np.ndarray:
    """(n, 19) soft labels of an image's cells from their probabilities (n, 19) and the image's
    multi-hot labels (19,).

    >>> p = np.zeros((2, 19)); p[:, 3] = [0.8, 0.2]; y = np.zeros(19); y[3] = 1
    >>> soft_labels(p, y)[:, [3, 18]].round(2).tolist()
    [[1.0, 0.0], [0.25, 0.75]]
    """
    y = np.asarray(image_labels, np.float64) > 0
    n = len(probs)
    out = np.zeros((n, NUM_CLASSES))
    if not n:
        return out
    positive = y.copy()
    positive[NEGATIVE] = False
    if not positive.any():  # a Negative (or unlabelled) image: none of its cells shows a class
        out[:, NEGATIVE] = 1.0
        return out
    s = np.clip(np.asarray(probs, np.float64)[:, positive], 0.0, 1.0)
    if normalise:
        s = s / np.maximum(s.max(axis=0, keepdims=True), 1e-6)
    out[:, positive] = s
    out[:, NEGATIVE] = np.prod(1.0 - s, axis=1)
    return out


def naive_labels(n_cells: int, image_labels: np.ndarray) -> np.ndarray:
    """Every cell gets its image's labels (what training on image labels assumes).

    >>> naive_labels(2, np.eye(19)[3]).sum(axis=1).tolist()
    [1.0, 1.0]
    """
    return np.tile((np.asarray(image_labels) > 0).astype(np.float64), (n_cells, 1))
