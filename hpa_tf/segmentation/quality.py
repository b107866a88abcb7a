"""How well predicted instances match true ones: the share matched at IoU >= 0.6 both ways."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MatchQuality:
    """Counts of true and predicted cells and how many were matched one-to-one at the threshold."""

    n_true: int
    n_pred: int
    matched: int

    @property
    def recall(self) -> float:
        """Share of true cells matched by a predicted cell."""
        return self.matched / self.n_true if self.n_true else 1.0

    @property
    def precision(self) -> float:
        """Share of predicted cells that match a true cell."""
        return self.matched / self.n_pred if self.n_pred else 1.0

    def __add__(self, other: MatchQuality) -> MatchQuality:
        return MatchQuality(self.n_true + other.n_true, self.n_pred + other.n_pred, self.matched + other.matched)


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every (true id, predicted id) pair of two label images, from one joint histogram.

    >>> t = np.array([[1, 1], [0, 2]]); p = np.array([[1, 0], [0, 1]])
    >>> iou_matrix(t, p)[1, 1], iou_matrix(t, p)[2, 1]
    (np.float64(0.3333333333333333), np.float64(0.5))
    """
    if truth.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {truth.shape} vs {pred.shape}")
    nt, npr = int(truth.max(initial=0)) + 1, int(pred.max(initial=0)) + 1
    joint = np.bincount(truth.astype(np.int64).ravel() * npr + pred.ravel(), minlength=nt * npr).reshape(nt, npr)
    inter = joint.astype(np.float64)
    area_t, area_p = inter.sum(1), inter.sum(0)
    union = area_t[:, None] + area_p[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_quality(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.6) -> MatchQuality:
    """Match instances one-to-one at IoU >= ``threshold`` (above 0.5 a match is unique anyway).

    >>> lab = np.zeros((4, 4), np.uint16); lab[:2] = 1; lab[2:] = 2
    >>> q = match_quality(lab, lab); (q.recall, q.precision)
    (1.0, 1.0)
    """
    iou = iou_matrix(truth, pred)[1:, 1:]
    n_true = int(np.count_nonzero(np.bincount(truth.ravel())[1:]))
    n_pred = int(np.count_nonzero(np.bincount(pred.ravel())[1:]))
    return MatchQuality(n_true, n_pred, int((iou >= threshold).sum()) if iou.size else 0)
