"""Metric speed on a test-set-sized job: 560 images of 2048 px, every cell listed for all 19
classes with a random confidence (the competition's test set: 559 images, ~22 cells each)."""

from __future__ import annotations

import dataclasses
import tempfile
import time

import numpy as np

from benchmarks.common import write_truth
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.metrics import evaluate
from hpa_tf.submission import ImagePrediction, read_submission, write_submission
from hpa_tf.synthetic.generator import generate


def run(quick: bool = False, n_images: int = 560, size: int = 2048, distinct: int = 20) -> dict:
    if quick:
        n_images, distinct = 56, 4
    rng = np.random.default_rng(0)
    # A few distinct layouts, each reused under many IDs: the metric's work per image is the same.
    layouts = [generate(9, "test", i, size, render=False) for i in range(distinct)]
    images = [dataclasses.replace(layouts[k % distinct], image_id=f"img{k:04d}") for k in range(n_images)]
    with tempfile.TemporaryDirectory() as d:
        truth = write_truth(d, images)
        preds = [
            ImagePrediction.from_label_image(
                img.image_id, img.cells, {i: rng.random(NUM_CLASSES) for i in range(1, len(img.cell_labels) + 1)})
            for img in images
        ]
        path = f"{d}/submission.csv"
        t = time.perf_counter()
        write_submission(path, preds)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        back = read_submission(path)
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        result = evaluate(truth, back)
        t_eval = time.perf_counter() - t
    n_cells = sum(len(img.cell_labels) for img in images)
    return {
        "images": n_images, "size_px": size, "cells": n_cells, "cells_per_image": n_cells / n_images,
        "detections": n_cells * NUM_CLASSES, "read_validate_s": t_read, "evaluate_s": t_eval,
        "read_plus_evaluate_s": t_read + t_eval, "write_csv_s": t_write, "mAP_random_scores": result.map,
    }
