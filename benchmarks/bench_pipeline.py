"""Input pipeline vs a naive loader (training speed: bench_training).

The records are built from 2048 px SynthHPA PNGs (the competition's size). The naive loader is
what a first script does: per image, read the four PNGs with OpenCV in Python and resize (and
for cell bags, read the mask, cut 16 cells and resize them). The figure is the ratio."""

from __future__ import annotations

import tempfile
import time

import cv2
import numpy as np

from hpa_tf.config import load_config
from hpa_tf.data.pipeline import make_dataset
from hpa_tf.segmentation import read_masks
from hpa_tf.synthetic.writer import make_one
from tfrecord_builder.__main__ import main as build


def _naive_images(data: str, ids: list[str], size: int) -> float:
    t = time.perf_counter()
    for image_id in ids:
        planes = [cv2.imread(f"{data}/{image_id}_{c}.png", cv2.IMREAD_UNCHANGED) for c in ("red", "green", "blue", "yellow")]
        np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in planes], -1).astype(np.float32) / 255
    return len(ids) / (time.perf_counter() - t)


def _naive_bags(data: str, masks: str, ids: list[str], size: int, bag: int) -> float:
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for image_id in ids:
        image = np.stack([cv2.imread(f"{data}/{image_id}_{c}.png", cv2.IMREAD_UNCHANGED) for c in ("red", "green", "blue", "yellow")], -1)
        cells = read_masks(masks, image_id, with_nuclei=False).cells
        picked = rng.choice(np.arange(1, cells.max() + 1), size=min(bag, int(cells.max())), replace=False)
        for k in picked:
            ys, xs = np.nonzero(cells == k)
            crop = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return len(ids) / (time.perf_counter() - t)


def _rate(ds, n_batches: int, batch: int) -> float:
    it = iter(ds)
    for _ in range(3):  # warm-up: file open, tracing, autotune
        next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch / (time.perf_counter() - t)


def run(quick: bool = False) -> dict:


    n = 8 if quick else 24
    out: dict = {"source_images": n, "source_px": 2048}
    with tempfile.TemporaryDirectory() as d:
        rows = [make_one((d, 31, i, "train", 2048)) for i in range(n)]
        ids = [r["ID"] for r in rows]
        with open(f"{d}/train.csv", "w") as f:
            f.write("ID,Label\n" + "".join(f"{r['ID']},{r['Label']}\n" for r in rows))
        build(["build", "--data", f"{d}/train", "--labels", f"{d}/train.csv", "--out", f"{d}/records", "--workers", "2",
               "--image-size", "512", "--cell-size", "128", "--folds", "1"])
        from hpa_tf.segmentation.__main__ import main as segment

        segment(["--data", f"{d}/train", "--out", f"{d}/masks", "--workers", "2", "--no-overlays"])
        cfg = load_config(None, [f"data.records={d}/records", "data.val_folds=[]", "data.image_size=512",
                                 "data.cell_size=128", "data.cells_per_bag=16", "data.shuffle_buffer=16"])
        batches = 6 if quick else 20
        out["pipeline_images_512_per_s"] = _rate(make_dataset(cfg, True, 8), batches, 8)
        out["naive_images_512_per_s"] = _naive_images(f"{d}/train", ids, 512)
        out["images_ratio"] = out["pipeline_images_512_per_s"] / out["naive_images_512_per_s"]
        cfg["data"]["kind"] = "cells"
        out["pipeline_bags_16x128_per_s"] = _rate(make_dataset(cfg, True, 4), batches, 4)
        out["naive_bags_16x128_per_s"] = _naive_bags(f"{d}/train", f"{d}/masks", ids, 128, 16)
        out["bags_ratio"] = out["pipeline_bags_16x128_per_s"] / out["naive_bags_16x128_per_s"]

    return out
