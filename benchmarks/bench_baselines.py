"""The two reference rows on a SynthHPA test split with the true masks: oracle image labels on
every cell, and the perfect answer. 560 images of 1024 px, seed 0 (the truth of
``python -m hpa_tf.synthetic --seed 0 --n-test 560 --size 1024``; pixels are not needed)."""

from __future__ import annotations

import tempfile
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from benchmarks.common import write_truth
from hpa_tf.baselines import oracle_predictions
from hpa_tf.metrics import evaluate
from hpa_tf.synthetic.generator import generate


def run(quick: bool = False, n_images: int = 560, size: int = 1024, seed: int = 0, workers: int = 2) -> dict:
    if quick:
        n_images = 64
    make = partial(generate, seed, "test", size=size, render=False)
    with ProcessPoolExecutor(workers) as pool:
        images = list(pool.map(make, range(n_images), chunksize=8))
    out = {"images": n_images, "size_px": size, "seed": seed, "cells": sum(len(i.cell_labels) for i in images)}
    with tempfile.TemporaryDirectory() as d:
        truth = write_truth(d, images)
        for kind in ("image-labels", "perfect"):
            res = evaluate(truth, oracle_predictions(truth, kind))
            out[f"mAP_{kind}"] = res.map
            if kind == "image-labels":
                out["AP_image-labels"] = {str(c): round(float(a), 4) for c, a in enumerate(res.ap) if res.n_gt[c]}
    return out
