"""Cell scores from an image model's class activation map (CAM x cell), pooled over each cell's mask
the way the model pools the whole image, so a cell's score and the image's probability are the same
function of the feature map.

An image classifier is backbone -> pooling -> 1x1 ``cam`` convolution -> sigmoid. Its cell score for
a cell is that head on the feature map pooled over the cell's pixels only: with average pooling this
is the mean of the CAM over the cell (the CAM is the 1x1 conv on each pixel's features); with GeM
pooling the CAM itself is not pooled by the model (the conv comes after a non-linear mean), so a mean
of the CAM would score cells on another scale than the image; pooling the features as GeM does keeps
the link: a "cell" covering the whole image gets exactly the image's probability (tested).

    >>> scorer = CamScorer(model)  # doctest: +SKIP
    >>> features, probs = scorer.run(images)  # (B, h, w, C), (B, 19)  # doctest: +SKIP
    >>> logits = scorer.cell_logits(features[0], mask_weights(small_mask, cell_ids, features.shape[1:3]))  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import numpy as np

from hpa_tf.models.layers import GeM


def mask_weights(mask: np.ndarray, cell_ids: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n, h, w): the fraction of each feature-map pixel that each cell covers in ``mask`` (S, S), the
    cell mask at the model's input size; a feature pixel covers the input pixels that map onto it.

    >>> m = np.zeros((4, 4), np.uint16); m[:2, :2] = 3
    >>> mask_weights(m, np.array([3]), (2, 2))[0].tolist()
    [[1.0, 0.0], [0.0, 0.0]]
    """
    h, w = int(grid[0]), int(grid[1])
    rows = (np.arange(mask.shape[0]) * h // mask.shape[0])[:, None]
    cols = (np.arange(mask.shape[1]) * w // mask.shape[1])[None, :]
    block = (rows * w + cols).ravel()
    per_block = np.bincount(block, minlength=h * w).astype(np.float64)
    lookup = np.full(int(max(mask.max(initial=0), cell_ids.max(initial=0))) + 1, -1, np.int64)
    lookup[cell_ids] = np.arange(len(cell_ids))
    row = lookup[mask.ravel().astype(np.int64)]
    inside = row >= 0
    counts = np.bincount(row[inside] * (h * w) + block[inside], minlength=len(cell_ids) * h * w)
    return (counts.reshape(len(cell_ids), h * w) / per_block).reshape(len(cell_ids), h, w)


class CamScorer:
    """The feature map and probabilities of an :func:`~hpa_tf.models.image_classifier` in one call, and
    its head applied to the features pooled over any region."""

    def __init__(self, model: keras.Model):
        try:
            pool, cam = model.get_layer("pool"), model.get_layer("cam")
        except ValueError as err:
            raise ValueError(f"model {model.name} is not an hpa-tf image classifier (no 'pool' and 'cam' layers): "
                             "CAM x cell scoring needs one") from err
        self.model = keras.Model(model.inputs[0], {"features": pool.input, "probs": model.output}, name=f"{model.name}_cam")
        kernel, bias = cam.get_weights()
        self.kernel, self.bias = kernel.reshape(kernel.shape[-2], kernel.shape[-1]).astype(np.float64), bias.astype(np.float64)
        self.p = float(keras.ops.convert_to_numpy(pool.p)) if isinstance(pool, GeM) else None
        self.eps = pool.eps if isinstance(pool, GeM) else 0.0

    def pooled(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(n, C): features (h, w, C) pooled over each region of weights (n, h, w) as the model pools."""
        f = features.reshape(-1, features.shape[-1]).astype(np.float64)
        w = weights.reshape(len(weights), -1)
        total = np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        if self.p is None:
            return (w @ f) / total
        return ((w @ np.power(np.maximum(f, self.eps), self.p)) / total) ** (1.0 / self.p)

    def cell_logits(self, features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """(n, 19) logits of the regions (cells) in ``weights`` (n, h, w) of one image's features (h, w, C)."""
        return self.pooled(features, weights) @ self.kernel + self.bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings. ``sigmoid(np.zeros(1))`` -> [0.5]"""
    return 0.5 * (1.0 + np.tanh(0.5 * x))
