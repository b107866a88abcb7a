"""Metric speed on a test-set-sized job: 560 images of 2048 px, every cell listed for all 19
classes (the competition's test set had 559 images, ~22 cells each)."""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pandas as pd

from hpa_tf.labels import NUM_CLASSES
from hpa_tf.metrics import evaluate
from hpa_tf.submission import ImagePrediction, read_submission, write_submission
from hpa_tf.synthetic.generator import generate
from hpa_tf.truth import Truth, write_cell_mask


def run(quick: bool = False, n_images: int = 560, size: int = 2048, distinct: int = 20) -> dict:
    if quick:
        n_images, distinct = 56, 4
    rng = np.random.default_rng(0)
    # A few distinct layouts, each reused under many IDs: the metric's work per image is the same.
    layouts = [generate(9, "test", i, size, render=False) for i in range(distinct)]
    with tempfile.TemporaryDirectory() as d:
        rows, cells, preds = [], {}, []
        for k in range(n_images):
            lay = layouts[k % distinct]
            image_id = f"img{k:04d}"
            write_cell_mask(d, image_id, lay.cells)
            rows.append({"ID": image_id, "split": "test", "ImageWidth": size, "ImageHeight": size,
                         "labels": lay.labels})
            cells[image_id] = {i: labs for i, labs in enumerate(lay.cell_labels, start=1)}
            n = len(lay.cell_labels)
            preds.append(ImagePrediction.from_label_image(
                image_id, lay.cells, {i: rng.random(NUM_CLASSES) for i in range(1, n + 1)}))
        truth = Truth(d, pd.DataFrame(rows), cells)
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
    n_cells = sum(len(c) for c in cells.values())
    return {
        "images": n_images, "size_px": size, "cells": n_cells, "cells_per_image": n_cells / n_images,
        "detections": n_cells * NUM_CLASSES,
        "read_validate_s": t_read, "evaluate_s": t_eval, "total_s": t_read + t_eval, "write_csv_s": t_write,
        "mAP_random_scores": result.map,
    }
