"""How good per-cell labels are, against the cell-level truth (SynthHPA has it for every training
cell; no competitor could see this number).

A record's cell is matched to the true cell it overlaps with IoU >= 0.5 in the records' cell mask;
cells without a match (segmentation errors, not label errors) are left out. Per class, the AP of a
label source's scores over all matched cells of all images, the cells that truly show the class
being the positives; the mean over the classes with positives is the figure.
"""

from __future__ import annotations

import cv2
import numpy as np

from hpa_tf.labels import CLASS_NAMES, NUM_CLASSES
from hpa_tf.metrics import average_precision
from hpa_tf.segmentation.quality import iou_matrix

MATCH_IOU = 0.5


def true_cell_labels(mask: np.ndarray, cell_ids: np.ndarray, truth_mask: np.ndarray,
                     truth_labels: dict[int, list[int]]) -> np.ndarray:
    """(n, 19) multi-hot truth of each record cell (rows of ``cell_ids`` in ``mask``, the records'
    cell mask), NaN where no true cell matches at IoU >= 0.5.

    >>> m = np.zeros((8, 8), np.uint16); m[:4] = 1; t = np.zeros((16, 16), np.uint16); t[:8] = 5
    >>> float(true_cell_labels(m, np.array([1]), t, {5: [3]})[0, 3])
    1.0
    """
    small = cv2.resize(truth_mask, mask.shape[::-1], interpolation=cv2.INTER_NEAREST)
    iou = iou_matrix(mask, small)  # record cell id x true cell id
    out = np.full((len(cell_ids), NUM_CLASSES), np.nan)
    for row, cid in enumerate(cell_ids):
        if cid >= len(iou) or iou.shape[1] < 2:
            continue
        best = int(np.argmax(iou[cid, 1:])) + 1
        if iou[cid, best] >= MATCH_IOU:
            out[row] = 0.0
            out[row, truth_labels.get(best, [])] = 1.0
    return out


def label_quality(truth: np.ndarray, sources: dict[str, np.ndarray]) -> dict:
    """``{"n_cells": matched cells, "positives": per class, "sources": {name: {"map": mean AP, "ap":
    {class: AP}}}}`` over the matched cells (rows of ``truth`` without NaN).

    >>> t = np.eye(19)[[3, 3, 18]]; s = {"a": np.eye(19)[[3, 18, 18]]}
    >>> round(label_quality(t, s)["sources"]["a"]["ap"]["Nucleoli fibrillar center"], 3)
    0.833
    """
    matched = ~np.isnan(truth).any(axis=1)
    t = truth[matched] > 0.5
    classes = [c for c in range(NUM_CLASSES) if t[:, c].any()]
    out: dict = {"n_cells": int(matched.sum()), "positives": {CLASS_NAMES[c]: int(t[:, c].sum()) for c in classes},
                 "sources": {}}
    for name, scores in sources.items():
        s = scores[matched]
        ap = {CLASS_NAMES[c]: average_precision(s[:, c], t[:, c], int(t[:, c].sum())) for c in classes}
        out["sources"][name] = {"map": float(np.mean(list(ap.values()))) if ap else float("nan"), "ap": ap}
    return out


def quality_markdown(quality: dict, names: dict[str, str]) -> str:
    """A table: one row per source (``names``: key -> description), mean AP then AP per class."""
    classes = list(quality["positives"])
    legend = ", ".join(f"{CLASS_NAMES.index(c)} {c}" for c in classes)
    lines = [f"Per-cell labels of the {quality['n_cells']} training cells matched to a true cell (IoU >= {MATCH_IOU}); "
             f"AP per class over all of them (columns: {legend}):", "",
             "| labels | mAP | " + " | ".join(str(CLASS_NAMES.index(c)) for c in classes) + " |",
             "|---|---|" + "---|" * len(classes)]
    for key, desc in names.items():
        if key in quality["sources"]:
            row = quality["sources"][key]
            lines.append(f"| {desc} | {row['map']:.3f} | " + " | ".join(f"{row['ap'][c]:.2f}" for c in classes) + " |")
    return "\n".join(lines) + "\n"
