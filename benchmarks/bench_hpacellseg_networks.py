"""The official segmentation networks, Keras vs PyTorch, on this machine: seconds per 2048 px field
(both networks on its 512 px rescale, with the segmenter's preparation of the inputs), loading the
files, XLA's first-call compilation, and the post-processing (``post=full`` and ``post=fast``).

The networks are full-size DPNUnets (DPN-92 encoder, 139 M parameters each) with random weights
(batch-norm statistics calibrated on a random batch, so activations keep a trained network's scale),
written as the official files are (a module pickled whole, torch's legacy serialisation) from the
PyTorch reference of the tests (``tests/torch_dpn_unet.py``): the real files cannot ship here; the
time does not depend on the weights. Both paths run the same file on the same input with the same
number of threads; the post-processing runs on SynthHPA's outputs of the same field
(:mod:`hpa_tf.synthetic.outputs`), since random networks give no cells. Needs PyTorch
(``pip install "hpa-tf[hpacellseg]"``); without it only the Keras figures are given.

    python -m benchmarks --only hpacellseg_networks [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hpa_tf.segmentation import get_segmenter
from hpa_tf.segmentation.hpacellseg import label_cells
from hpa_tf.synthetic.generator import generate
from hpa_tf.synthetic.outputs import network_outputs


def _threads() -> int:
    n = os.cpu_count() or 1
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started: its default is every core too
        pass
    return n


def _torch():
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the PyTorch reference
    return torch


def _write_official_like(torch, path: str) -> None:
    from torch_dpn_unet import DPNUnet, as_official_classes, calibrate, randomise

    as_official_classes()
    torch.save(calibrate(randomise(DPNUnet(3, 3), seed=0)), path, _use_new_zipfile_serialization=False)


def _per_field(seg, images: list, repeat: int) -> tuple[float, float, list]:
    """First call (loading and compiling included) and the best per-field time of ``repeat`` more."""
    t = time.perf_counter()
    out = seg.predict(images[:1])
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = seg.predict(images)
        best = min(best, (time.perf_counter() - t) / len(images))
    return first, best, out


def run(quick: bool = False) -> dict:
    threads = _threads()
    torch = _torch()
    n, repeat = (1, 1) if quick else (2, 2)
    fields = [generate(31, "test", i, 2048) for i in range(n)]
    images = [f.image for f in fields]
    out: dict = {"fields": n, "px": 2048, "network_px": 512, "threads": threads}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "dpn_unet_random.pth")
        if torch is None:
            from hpa_tf.segmentation.official import build_network, save_network

            save_network(build_network(), path := os.path.join(folder, "dpn_unet_random.keras"))
            out["torch"] = "not installed: Keras only (from a .keras copy)"
        else:
            torch.set_num_threads(threads)
            _write_official_like(torch, path)
            out["file_mb"] = os.path.getsize(path) / 2**20
        spec = f"hpacellseg:nuclei={path},cell={path},device=cpu,batch={n}"
        from hpa_tf.segmentation.official.convert import load_network

        t = time.perf_counter()
        load_network(path)
        out["keras_load_s"] = time.perf_counter() - t  # one network: read as data, built, weights set
        results = {}
        for name, extra in (("keras_xla", ""), ("keras_graph", ",xla=0"), ("torch", ",backend=torch")):
            if name == "torch" and torch is None:
                continue
            first, best, results[name] = _per_field(get_segmenter(spec + extra), images, repeat)
            out[f"{name}_first_call_s"] = first
            out[f"{name}_networks_s_per_field"] = best
        if "torch" in results:
            t = time.perf_counter()
            torch.load(path, weights_only=False)
            out["torch_load_s"] = time.perf_counter() - t
            diff = max(int(np.abs(k.astype(int) - p).max()) for a, b in zip(results["keras_xla"], results["torch"])
                       for k, p in zip(a, b))
            out["keras_vs_torch_max_uint8_difference"] = diff
            out["torch_over_keras_xla"] = out["torch_networks_s_per_field"] / out["keras_xla_networks_s_per_field"]
    post = {"full": 0.0, "fast": 0.0}
    for i, f in enumerate(fields):
        nuc, cell = network_outputs(f.nuclei, 512, i), network_outputs(f.cells, 512, 100 + i)
        import cv2

        big = [cv2.resize(p, (2048, 2048), interpolation=cv2.INTER_AREA) for p in (nuc, cell)]
        t = time.perf_counter()
        label_cells(*big, pixel_scale=1.0)
        post["full"] += time.perf_counter() - t
        t = time.perf_counter()
        label_cells(nuc, cell, pixel_scale=0.25)
        post["fast"] += time.perf_counter() - t
    out["post_full_s_per_field"] = post["full"] / n
    out["post_fast_s_per_field"] = post["fast"] / n
    best = min(v for k, v in out.items() if k.endswith("networks_s_per_field") and k.startswith("keras"))
    out["keras_total_fast_s_per_field"] = best + out["post_fast_s_per_field"]
    return out
