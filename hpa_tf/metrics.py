"""The competition metric: mAP over the 19 classes at mask IoU >= 0.6 (OpenImages style).

Per image and class, detections are taken by decreasing confidence (ties: the one listed
first); each takes the ground-truth cell of that class with the highest IoU; it is a true
positive if that IoU is >= 0.6 and the cell is not matched yet, else a false positive (so a
duplicate is a false positive). Per class, all images' detections are pooled and sorted by
confidence; precision is made non-increasing from the right; AP = sum over recall steps of
(recall step x precision). mAP is the mean over classes that have ground truth.

Equal confidences across the pooled list form one threshold step (as in scikit-learn's
average precision), so the score does not depend on the order of rows in the file.

IoU is computed from each distinct encoded mask's pixel runs looked up in the truth label
image: no full-size binary mask is built per cell.

CLI::

    python -m hpa_tf.metrics --truth synth/truth --split test --submission submission.csv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from hpa_tf.cli import run
from hpa_tf.labels import CLASS_NAMES, NUM_CLASSES
from hpa_tf.rle import label_runs, mask_runs
from hpa_tf.submission import ImagePrediction, SubmissionError, read_submission
from hpa_tf.truth import Truth

IOU_THRESHOLD = 0.6


@dataclass
class MetricResult:
    """Per-class AP (NaN where a class has no ground truth), counts, and the mean."""

    ap: np.ndarray
    n_gt: np.ndarray
    n_det: np.ndarray
    n_tp: np.ndarray

    @property
    def map(self) -> float:
        has_gt = self.n_gt > 0
        return float(np.mean(self.ap[has_gt])) if has_gt.any() else float("nan")

    def table(self) -> str:
        """A fixed-width per-class table ending with the ``mAP`` line."""
        lines = [f"{'id':>2}  {'class':<42} {'n_gt':>6} {'n_det':>7} {'TP':>6} {'AP':>7}"]
        for c in range(NUM_CLASSES):
            ap = "   -   " if self.n_gt[c] == 0 else f"{self.ap[c]:7.4f}"
            lines.append(
                f"{c:>2}  {CLASS_NAMES[c]:<42} {self.n_gt[c]:>6} {self.n_det[c]:>7} {self.n_tp[c]:>6} {ap}"
            )
        lines.append(f"mAP {self.map:.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "mAP": self.map,
            "per_class": {
                CLASS_NAMES[c]: {
                    "id": c,
                    "AP": None if self.n_gt[c] == 0 else float(self.ap[c]),
                    "n_gt": int(self.n_gt[c]),
                    "n_det": int(self.n_det[c]),
                    "n_tp": int(self.n_tp[c]),
                }
                for c in range(NUM_CLASSES)
            },
        }


def mask_ious(masks: list[str], truth_mask: np.ndarray) -> np.ndarray:
    """IoU of each encoded mask with every truth cell id: shape (len(masks), max_id + 1).

    Intersections come from overlapping pixel runs (predicted runs against the truth image's
    runs), so the cost grows with the number of runs, not of pixels. Column 0 is unused.

    >>> lab = np.zeros((4, 5), np.uint16); lab[1:3, 1:4] = 1
    >>> mask_ious(['eNozNTIyMDAwBgAFgwFd'], lab)[0, 1]
    np.float64(1.0)
    """
    h, w = truth_mask.shape
    t_start, t_len, t_val = label_runs(truth_mask)
    t_end = t_start + t_len
    n_ids = int(t_val.max(initial=0)) + 1
    gt_area = np.bincount(t_val, weights=t_len, minlength=n_ids)
    runs = [mask_runs(enc, h, w) for enc in masks]
    area = np.array([float(lengths.sum()) for _, lengths in runs])
    if not runs:
        return np.zeros((0, n_ids))
    p_start = np.concatenate([r[0] for r in runs])
    p_end = p_start + np.concatenate([r[1] for r in runs])
    p_mask = np.repeat(np.arange(len(runs)), [r[0].size for r in runs])
    # Truth runs overlapping predicted run i: those ending after its start and starting before its end.
    lo = np.searchsorted(t_end, p_start, side="right")
    hi = np.searchsorted(t_start, p_end, side="left")
    n_hits = np.maximum(hi - lo, 0)
    which = np.repeat(np.arange(p_start.size), n_hits)
    idx = np.repeat(lo - np.concatenate([[0], np.cumsum(n_hits)[:-1]]), n_hits) + np.arange(which.size)
    overlap = np.minimum(t_end[idx], p_end[which]) - np.maximum(t_start[idx], p_start[which])
    inter = np.bincount(p_mask[which] * n_ids + t_val[idx], weights=overlap, minlength=len(runs) * n_ids)
    inter = inter.reshape(len(runs), n_ids)
    union = area[:, None] + gt_area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_image(
    pred: ImagePrediction | None,
    cells: dict[int, list[int]],
    truth_mask: np.ndarray | None,
    iou_threshold: float = IOU_THRESHOLD,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """TP/FP flags of one image's detections: a list of ``(class, confidences, is_tp)``."""
    if pred is None or pred.classes.size == 0:
        return []
    assert truth_mask is not None
    ious = mask_ious(pred.masks, truth_mask)
    gt_by_class: dict[int, list[int]] = {}
    for cid, labs in cells.items():
        for c in labs:
            gt_by_class.setdefault(c, []).append(cid)
    out = []
    for c in np.unique(pred.classes):
        sel = np.flatnonzero(pred.classes == c)
        sel = sel[np.argsort(-pred.confidences[sel], kind="stable")]
        tp = np.zeros(sel.size, bool)
        gt = np.array([g for g in gt_by_class.get(int(c), []) if g < ious.shape[1]], np.int64)
        if gt.size:
            matched = np.zeros(gt.size, bool)
            for k, det in enumerate(sel):
                row = ious[pred.mask_index[det], gt]
                j = int(np.argmax(row))
                if row[j] >= iou_threshold and not matched[j]:
                    matched[j] = tp[k] = True
        out.append((int(c), pred.confidences[sel], tp))
    return out


def average_precision(confidences: np.ndarray, is_tp: np.ndarray, n_gt: int) -> float:
    """AP of pooled detections; equal confidences form one threshold step.

    >>> average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    0.8333333333333333
    """
    if n_gt == 0:
        return float("nan")
    if confidences.size == 0:
        return 0.0
    order = np.argsort(-confidences, kind="stable")
    conf, tp = confidences[order], is_tp[order].astype(np.float64)
    ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
    last = np.append(conf[1:] != conf[:-1], True)
    precision = ctp[last] / (ctp[last] + cfp[last])
    recall = ctp[last] / n_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def evaluate(
    truth: Truth,
    predictions: Iterable[ImagePrediction],
    iou_threshold: float = IOU_THRESHOLD,
    progress: bool = False,
) -> MetricResult:
    """Score predictions against a truth split.

    Images of the truth without a prediction count as all missed. A predicted ID that the
    truth does not have, or a size that differs from the truth's, is an error.

    >>> evaluate(Truth.load("synth/truth", "test"), read_submission("sub.csv")).map  # doctest: +SKIP
    0.71
    """
    preds = {p.image_id: p for p in predictions}
    sizes = {i: (int(w), int(h)) for i, w, h in zip(truth.images["ID"], truth.images["ImageWidth"], truth.images["ImageHeight"])}
    unknown = sorted(set(preds) - set(sizes))
    if unknown:
        raise SubmissionError(f"{len(unknown)} predicted IDs are not in the truth split (e.g. {unknown[:3]})")
    n_gt = np.zeros(NUM_CLASSES, np.int64)
    for cells in truth.cell_labels.values():
        for labs in cells.values():
            n_gt[labs] += 1
    for image_id, pred in preds.items():
        if pred.classes.size and (pred.width, pred.height) != sizes[image_id]:
            raise SubmissionError(
                f"ID {image_id}: submission says {pred.width}x{pred.height}, truth is "
                f"{sizes[image_id][0]}x{sizes[image_id][1]} (width x height of the original image)"
            )

    def one(image_id: str) -> list[tuple[int, np.ndarray, np.ndarray]]:
        pred = preds.get(image_id)
        if pred is None or pred.classes.size == 0:
            return []
        return match_image(pred, truth.cell_labels[image_id], truth.mask(image_id), iou_threshold)

    confs: list[list[np.ndarray]] = [[] for _ in range(NUM_CLASSES)]
    tps: list[list[np.ndarray]] = [[] for _ in range(NUM_CLASSES)]
    # PNG decoding and most numpy work release the GIL: threads use every core. Results come
    # back in image order, so the pooled lists (and the score) do not depend on scheduling.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = pool.map(one, list(sizes))
        for matched in tqdm(results, total=len(sizes), desc="scoring", unit="img", disable=not progress):
            for c, conf, tp in matched:
                confs[c].append(conf)
                tps[c].append(tp)
    ap = np.full(NUM_CLASSES, np.nan)
    n_det = np.zeros(NUM_CLASSES, np.int64)
    n_tp = np.zeros(NUM_CLASSES, np.int64)
    for c in range(NUM_CLASSES):
        conf = np.concatenate(confs[c]) if confs[c] else np.zeros(0)
        tp = np.concatenate(tps[c]) if tps[c] else np.zeros(0, bool)
        n_det[c], n_tp[c] = conf.size, int(tp.sum())
        ap[c] = average_precision(conf, tp, int(n_gt[c]))
    return MetricResult(ap, n_gt, n_det, n_tp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpa_tf.metrics",
        description="Score a submission CSV with the competition's mAP@IoU0.6 against cell-level truth.",
    )
    parser.add_argument("--truth", required=True, help="truth folder (cells.csv, images.csv, *_cells.png)")
    parser.add_argument("--split", default="test", help="which split of the truth to score (default: test)")
    parser.add_argument("--submission", required=True, help="submission CSV")
    parser.add_argument("--iou", type=float, default=IOU_THRESHOLD, help="IoU threshold (default 0.6)")
    parser.add_argument("--json", help="also write the per-class results here")
    args = parser.parse_args(argv)
    truth = Truth.load(args.truth, args.split)
    preds = read_submission(args.submission)
    missing = set(truth.images["ID"]) - {p.image_id for p in preds}
    if missing:
        print(f"warning: {len(missing)} images of the split have no row; their cells count as missed", file=sys.stderr)
    result = evaluate(truth, preds, args.iou, progress=True)
    if args.json:
        from hpa_tf import fs

        fs.write_text(args.json, json.dumps(result.to_dict(), indent=2))
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
