"""Encoding all cells of an image: one pass over the label image vs the reference
(``pycocotools.mask.encode`` of one full-size binary mask per cell, then zlib + base64)."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as coco

from benchmarks.common import best_of
from hpa_tf.rle import encode_label_image
from hpa_tf.synthetic.generator import generate

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "hpa_samples" / "hpa_cellatlas_2048" / "1000_A12_2_cellmask.png"


def _reference(labels: np.ndarray) -> dict[int, str]:
    out = {}
    for cid in np.unique(labels):
        if cid:
            m = np.asfortranarray((labels == cid)[..., None].astype(np.uint8))
            out[int(cid)] = base64.b64encode(zlib.compress(coco.encode(m)[0]["counts"], 9)).decode()
    return out


def run(quick: bool = False) -> dict:
    cases = {"real_hpa_2048": cv2.imread(str(SAMPLE), cv2.IMREAD_UNCHANGED),
             "synthhpa_2048": generate(9, "test", 0, 2048, render=False).cells}
    out = {}
    for name, labels in cases.items():
        assert encode_label_image(labels) == _reference(labels)
        ours = best_of(lambda lab=labels: encode_label_image(lab))
        ref = best_of(lambda lab=labels: _reference(lab))
        out[name] = {"cells": int(len(np.unique(labels)) - 1), "ours_s": ours, "reference_s": ref, "speedup": ref / ours}
    return out
