"""Prediction seconds per 2048 px image on this machine, by stage (read, segmentation, crops,
model inference, mask encoding), for the demo's two models (small CNN: image 128 px, cell bags
of 64 px) and for EfficientNet-B0 models at the competition's sizes (image 512 px, cells 128 px).

``workers=0`` runs every stage in one process (a clean per-stage breakdown, one core for the CPU
stages); ``workers=1`` overlaps reading and segmentation with inference, which is how predict.py
runs: its steady wall time per image is the figure a user sees, measured as the difference between
runs over 2n and n images (so the worker's start-up, about 3 s of imports, does not count).
Untrained models: the same compute as trained ones."""

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


def _timed(data: str, models: list[str], out: str, workers: int, sample: str | None) -> tuple[float, dict]:
    from hpa_tf.inference.runner import RunConfig, run

    t = time.perf_counter()
    summary = run(RunConfig(data=data, models=models, out=out, workers=workers, overlays=0, sample_submission=sample))
    return time.perf_counter() - t, summary


def _one(data: str, models: list[str], out: str, workers: int, n: int, half: str) -> dict:
    wall_2n, summary = _timed(data, models, f"{out}_all.csv", workers, None)
    wall_n, _ = _timed(data, models, f"{out}_half.csv", workers, half)
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
            for workers in (0, 1):
                out[f"{label}.workers{workers}"] = _one(data, models, f"{d}/{label}_{workers}", workers, n, half)
    return out
