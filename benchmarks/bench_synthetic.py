"""SynthHPA generator speed on one core: images/s at 1024 and 2048 px, PNG writing included,
with the stage split (layout + labels, pixel rendering, PNG encoding + writing)."""

from __future__ import annotations

import tempfile
import time

from hpa_tf.synthetic import generator
from hpa_tf.synthetic.writer import make_one


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def run(quick: bool = False) -> dict:
    out = {}
    for size, n in ((1024, 8 if quick else 32), (2048, 2 if quick else 8)):
        total = layout = full = 0.0
        with tempfile.TemporaryDirectory() as d:
            make_one((d, 7, 0, "train", size))  # warm-up: imports, first allocations
            for i in range(1, n + 1):
                total += _timed(make_one, (d, 7, i, "train", size))
                layout += _timed(generator.generate, 7, "train", i, size, False)
                full += _timed(generator.generate, 7, "train", i, size)
        out[f"{size}px"] = {
            "images": n, "s_per_image": total / n, "images_per_s_per_core": n / total,
            "layout_s": layout / n, "render_s": (full - layout) / n, "encode_write_s": (total - full) / n,
        }
    return out
