"""What every benchmark shares: the machine it ran on and a small timer."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import pandas as pd

from hpa_tf.truth import Truth, write_cell_mask


def machine() -> dict:
    """CPU model, cores, Python and TensorFlow versions: a figure means nothing without them."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except ImportError:
        pass
    return info


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of ``repeat`` wall-clock runs, in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def write_truth(folder: str, images: list) -> Truth:
    """Write SynthImages' masks into ``folder`` and return their :class:`hpa_tf.truth.Truth` (split ``test``)."""
    rows, cells = [], {}
    for img in images:
        write_cell_mask(folder, img.image_id, img.cells)
        h, w = img.cells.shape
        rows.append({"ID": img.image_id, "split": "test", "ImageWidth": w, "ImageHeight": h, "labels": img.labels})
        cells[img.image_id] = {k: labs for k, labs in enumerate(img.cell_labels, start=1)}
    return Truth(folder, pd.DataFrame(rows), cells)
