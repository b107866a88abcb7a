"""Write one SynthHPA image and its truth (the per-image job of ``python -m hpa_tf.synthetic``).

A module of its own so that spawned worker processes can import the job function.
"""

from __future__ import annotations

import numpy as np

from hpa_tf import fs
from hpa_tf.io.images import CHANNELS
from hpa_tf.io.png import encode_png, write_label_png
from hpa_tf.labels import format_labels
from hpa_tf.synthetic.generator import generate, image_id
from hpa_tf.truth import mask_path, nuclei_path, write_cell_mask


def _paths(out: str, split: str, image_id: str) -> list[str]:
    truth = fs.join(out, "truth")
    return [fs.join(out, split, f"{image_id}_{c}.png") for c in CHANNELS] + [
        mask_path(truth, image_id),
        nuclei_path(truth, image_id),
    ]


def make_one(job: tuple[str, int, int, str, int, str, float, float]) -> dict:
    """Generate and write one image (a pure function of its job, for any worker): ``(out, seed,
    index, split, size, label_mix, texture_scale, varying_share)``."""
    out, seed, index, split, size, label_mix, texture_scale, varying_share = job
    done = all(fs.exists(p) for p in _paths(out, split, image_id(seed, split, index)))
    img = generate(seed, split, index, size, render=not done, label_mix=label_mix, texture_scale=texture_scale,
                   varying_share=varying_share)
    if not done:
        assert img.image is not None
        paths = _paths(out, split, img.image_id)
        for k, path in enumerate(paths[:4]):
            fs.write_bytes(path, encode_png(np.ascontiguousarray(img.image[..., k])))
        write_label_png(paths[5], img.nuclei)
        write_cell_mask(fs.join(out, "truth"), img.image_id, img.cells)  # last: marks completion
    h, w = img.cells.shape
    return {
        "ID": img.image_id, "split": split, "ImageWidth": w, "ImageHeight": h,
        "Label": format_labels(img.labels),
        "cells": [format_labels(c) for c in img.cell_labels],
        "skipped": done,
    }
