"""The official segmenter's post-processing (network outputs -> nucleus and cell labels): hpa-tf's
re-implementation at full resolution (``post=full``) and at the network's (``post=fast``), against
the official ``hpacellseg.utils.label_cell`` when that package is importable, on the same outputs:
seconds per 2048 px image, the ratio, identical labels (full) and cells matched at IoU >= 0.6 (fast).

The outputs are SynthHPA's truth as the networks would give it (:mod:`hpa_tf.synthetic.outputs`):
the real model files cannot ship here. The official code calls ``np.bool``, gone from numpy 2: the
benchmark restores that one name before calling it.

    python -m benchmarks --only hpacellseg
"""

from __future__ import annotations

import time
import warnings

import cv2
import numpy as np

from hpa_tf.segmentation.hpacellseg import label_cells
from hpa_tf.segmentation.quality import MatchQuality, match_quality
from hpa_tf.synthetic.generator import generate
from hpa_tf.synthetic.outputs import network_outputs


def _official():
    try:
        from hpacellseg import utils
    except ImportError:
        return None
    if not hasattr(np, "bool"):
        np.bool = bool  # the official code's only use of a removed numpy name
    return utils.label_cell


def run(quick: bool = False) -> dict:
    official = _official()
    n = 2 if quick else 6
    times = {"official": 0.0, "full": 0.0, "fast": 0.0}
    identical, fast_q, fast_nuclei_q = 0, MatchQuality(0, 0, 0), MatchQuality(0, 0, 0)
    cells = 0
    for i in range(n):
        img = generate(21, "test", i, 2048)
        nuc, cell = network_outputs(img.nuclei, 512, i), network_outputs(img.cells, 512, 100 + i)
        big = [cv2.resize(p, (2048, 2048), interpolation=cv2.INTER_AREA) for p in (nuc, cell)]  # as the tool restores them
        t = time.perf_counter()
        full_nuclei, full_cells = label_cells(*big, pixel_scale=1.0)
        times["full"] += time.perf_counter() - t
        t = time.perf_counter()
        fast_nuclei, fast_cells = label_cells(nuc, cell, pixel_scale=0.25)
        times["fast"] += time.perf_counter() - t
        reference_nuclei, reference_cells = full_nuclei, full_cells
        if official is not None:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference_nuclei, reference_cells = official(big[0].copy(), big[1].copy())
            times["official"] += time.perf_counter() - t
            identical += int(np.array_equal(reference_cells, full_cells) and np.array_equal(reference_nuclei, full_nuclei))
        up = {k: cv2.resize(v, (2048, 2048), interpolation=cv2.INTER_NEAREST) for k, v in
              (("cells", fast_cells), ("nuclei", fast_nuclei))}
        fast_q = fast_q + match_quality(reference_cells, up["cells"])
        fast_nuclei_q = fast_nuclei_q + match_quality(reference_nuclei, up["nuclei"])
        cells += int(reference_cells.max())
    out: dict = {"images": n, "px": 2048, "cells": cells, "official_code": "hpacellseg.utils" if official else "not installed",
                 "full_s_per_image": times["full"] / n, "fast_s_per_image": times["fast"] / n,
                 "fast_vs_reference_cells_matched_recall": fast_q.recall,
                 "fast_vs_reference_cells_matched_precision": fast_q.precision,
                 "fast_vs_reference_nuclei_matched_recall": fast_nuclei_q.recall,
                 "fast_vs_reference_nuclei_matched_precision": fast_nuclei_q.precision}
    if official is not None:
        out.update(official_s_per_image=times["official"] / n, full_identical_images=identical,
                   full_speedup=times["official"] / times["full"], fast_speedup=times["official"] / times["fast"])
    return out
