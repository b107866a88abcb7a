"""Prediction seconds per 2048 px image on this machine, by stage (read, segmentation, crops,
model inference, mask encoding), for the demo's two models (small CNN: image 128 px, cell bags
of 64 px) and for EfficientNet-B0 models at the competition's sizes (image 512 px, cells 128 px).

``workers=0`` runs every stage in one process (a clean per-stage breakdown, one core for the CPU
stages); ``workers=1`` overlaps reading and segmentation with inference, which is how predict.py
runs: its steady wall time per image is the figure a user sees, measured as the difference between
runs over 2n and n images (so the worker's start-up, about 3 s of imports, does not count).
Untrained models: the same compute as trained ones. ``group`` is how many images share the models'
batches (1: one image per model call, as prediction ran before cross-image batching).

``memory`` runs predict.py over 50 and over 200 images of 2048 px and reports the peak resident
memory of its largest process (workers included): bounded, it does not grow with the test set."""

from __future__ import annotations

import tempfile
import time

from hpa_tf.synthetic.writer import make_one


def _models(d: str, backbone: str, image_size: int, cell_size: int) -> list[str]:
    import keras

    from hpa_tf.models import cell_bag_model, image_classifier

    keras.utils.set_random_seed(0)
    paths = [f"{d}/{backbone}_image.keras", f"{d}/{backbone}_cells.keras"]
    image_classifier(backbone, image_size).save(paths[0])
    cell_bag_model(backbone, cell_size).save(paths[1])
    return paths


def _timed(data: str, models: list[str], out: str, workers: int, sample: str | None, group: int) -> tuple[float, dict]:
    from hpa_tf.inference.runner import RunConfig, run

    t = time.perf_counter()
    summary = run(RunConfig(data=data, models=models, out=out, workers=workers, overlays=0, sample_submission=sample,
                            group=group))
    return time.perf_counter() - t, summary


def _one(data: str, models: list[str], out: str, workers: int, n: int, half: str, group: int) -> dict:
    wall_2n, summary = _timed(data, models, f"{out}_all.csv", workers, None, group)
    wall_n, _ = _timed(data, models, f"{out}_half.csv", workers, half, group)
    per = {k: round(v, 4) for k, v in summary["seconds_per_image"].items()}
    return {"steady_wall_s_per_image": (wall_2n - wall_n) / n, "stages_s_per_image": per,
            "cells_per_image": summary["cells"] / (2 * n)}


def run(quick: bool = False) -> dict:
    n = 3 if quick else 6
    out: dict = {"images": 2 * n, "image_px": 2048}
    with tempfile.TemporaryDirectory() as d:
        rows = [make_one((d, 41, i, "test", 2048)) for i in range(2 * n)]
        half = f"{d}/half.csv"
        with open(half, "w") as f:
            f.write("ID,ImageWidth,ImageHeight,PredictionString\n" + "".join(f"{r['ID']},2048,2048,\n" for r in rows[:n]))
        data = f"{d}/test"
        setups = [("demo_small_cnn", "small_cnn", 128, 64)]
        if not quick:
            setups.append(("efficientnet_b0", "efficientnet_b0", 512, 128))
        for label, backbone, image_size, cell_size in setups:
            models = _models(d, backbone, image_size, cell_size)
            out[f"{label}.workers0"] = _one(data, models, f"{d}/{label}_0", 0, n, half, 8)
            for group in (1, 8):
                out[f"{label}.workers1.group{group}"] = _one(data, models, f"{d}/{label}_1_{group}", 1, n, half, group)
            one, eight = (out[f"{label}.workers1.group{g}"]["steady_wall_s_per_image"] for g in (1, 8))
            out[f"{label}.group8_images_per_s_over_group1"] = one / eight
        out["memory"] = memory(d, 20 if quick else 200)
    return out


def _peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory (MB) of the largest process of a command, its worker processes included."""
    import os
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"{' '.join(cmd)} failed")
    return usage.ru_maxrss / 1024


def memory(d: str, n: int) -> dict:
    """predict.py over a quarter of ``n`` and over ``n`` images of 2048 px: peak memory of each run."""
    import sys
    from concurrent.futures import ProcessPoolExecutor

    folder = f"{d}/memory"
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(make_one, [(folder, 43, i, "test", 2048) for i in range(n)]))
    models = _models(d, "small_cnn", 128, 64)
    out = {"images_px": 2048}
    for count in (n // 4, n):
        sample = f"{folder}/sample_{count}.csv"
        with open(sample, "w") as f:
            f.write("ID,ImageWidth,ImageHeight,PredictionString\n" + "".join(f"{r['ID']},2048,2048,\n" for r in rows[:count]))
        cmd = [sys.executable, "predict.py", "--data", f"{folder}/test", "--models", *models, "--out",
               f"{folder}/sub_{count}.csv", "--sample-submission", sample, "--workers", "1", "--overlays", "0"]
        out[f"peak_rss_mb_{count}_images"] = _peak_rss_mb(cmd)
    return out
