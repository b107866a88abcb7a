"""Classical segmentation: quality on SynthHPA (share of true cells matched by a predicted cell at
IoU >= 0.6, and of predicted cells matching a true one) at the competition's image sizes, and
seconds per 2048 px image on one CPU core with the stage split."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hpa_tf.io import read_image
from hpa_tf.segmentation import ClassicalSegmenter
from hpa_tf.segmentation.quality import MatchQuality, match_quality
from hpa_tf.synthetic.generator import generate
from hpa_tf.synthetic.writer import make_one


def run(quick: bool = False) -> dict:
    cv2.setNumThreads(1)  # one core, as the figure promises
    sizes = {512: 8, 1024: 16, 1728: 6, 2048: 16, 3072: 4}
    if quick:
        sizes = {512: 2, 1024: 3, 2048: 2}
    out: dict = {"quality": {}}
    for size, n in sizes.items():
        seg = ClassicalSegmenter()
        cells, nuclei = MatchQuality(0, 0, 0), MatchQuality(0, 0, 0)
        for i in range(n):
            img = generate(11, "test", i, size)
            res = seg.segment_one(img.image)
            cells = cells + match_quality(img.cells, res.cells)
            nuclei = nuclei + match_quality(img.nuclei, res.nuclei)
        out["quality"][f"{size}px"] = {
            "images": n, "true_cells": cells.n_true, "cell_recall": cells.recall, "cell_precision": cells.precision,
            "nucleus_recall": nuclei.recall, "nucleus_precision": nuclei.precision,
        }
    out["real_nuclei"] = real_nuclei()
    n = 3 if quick else 10
    seg = ClassicalSegmenter()
    with tempfile.TemporaryDirectory() as d:
        ids = [make_one((d, 12, i, "test", 2048))["ID"] for i in range(n)]
        read_s = 0.0
        for image_id in ids:
            t = time.perf_counter()
            image = read_image(f"{d}/test", image_id)
            read_s += time.perf_counter() - t
            seg.segment_one(image)
    stages = {f"{k}_s": v / n for k, v in seg.timings.items()}
    out["speed_2048px_one_core"] = {
        "images": n, "segment_s_per_image": sum(stages.values()), **stages, "read_4_pngs_s_per_image": read_s / n,
    }
    cv2.setNumThreads(-1)
    return out


def real_nuclei() -> dict:
    """Nuclei on the real fluorescence image with 64 nuclei drawn by people (tests/data/real_nuclei_dev),
    scaled 4x to HPA's nucleus size and given as its dim 16-bit self: recall and precision at IoU >= 0.6."""
    import tifffile

    folder = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_nuclei_dev"
    plane, truth = tifffile.imread(folder / "nuclei.tif"), tifffile.imread(folder / "nuclei_mask.tif")
    big = cv2.resize(plane, (plane.shape[1] * 4, plane.shape[0] * 4), interpolation=cv2.INTER_LINEAR)
    image = np.zeros((*big.shape, 4), big.dtype)
    image[..., 2] = big
    nuclei = ClassicalSegmenter().segment_one(image).nuclei
    q = match_quality(truth, cv2.resize(nuclei, truth.shape[::-1], interpolation=cv2.INTER_NEAREST))
    return {"true": q.n_true, "predicted": q.n_pred, "recall": q.recall, "precision": q.precision}
