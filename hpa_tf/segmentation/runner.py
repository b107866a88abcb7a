"""Segment a folder of images: the per-chunk job behind ``python -m hpa_tf.segmentation``.

A module of its own so that spawned worker processes can import the job. Each job reads a few
images, segments them in one call (backends batch where they can), and writes per image
``{ID}_nucleimask.png``, ``{ID}_cellmask.png`` (last: it marks the image done) and, on request,
``{ID}_overlay.png``. A bad image becomes an error row, never a crashed run.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from hpa_tf import fs, viz
from hpa_tf.io import read_image, to_8bit_view
from hpa_tf.segmentation import (
    Segmentation,
    Segmenter,
    get_segmenter,
    runs_on_accelerator,
    write_masks,
)
from hpa_tf.segmentation.precomputed import cell_mask_path
from hpa_tf.workers import die_with_parent

OVERLAY_SIDE = 1024


@functools.cache
def _segmenter(spec: str, options: tuple[tuple[str, Any], ...]) -> Segmenter:
    return get_segmenter(spec, **dict(options))


def overlay(image: np.ndarray, seg: Segmentation, side: int = OVERLAY_SIDE) -> np.ndarray:
    """A composite of the image with cells outlined in white and nuclei in yellow (BGR).

    >>> overlay(np.zeros((64, 64, 4), np.uint8), Segmentation(*(np.zeros((64, 64), np.uint16),) * 2)).shape
    (64, 64, 3)
    """
    h, w = image.shape[:2]
    scale = min(side / max(h, w), 1.0)
    size = (max(int(w * scale), 1), max(int(h * scale), 1))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
    small = to_8bit_view(small)
    cells = cv2.resize(seg.cells, size, interpolation=cv2.INTER_NEAREST) if scale < 1 else seg.cells
    nuclei = cv2.resize(seg.nuclei, size, interpolation=cv2.INTER_NEAREST) if scale < 1 else seg.nuclei
    out = viz.draw_cells(viz.composite(small), cells, None, 1, False)
    nuc_edges = viz.draw_cells(np.zeros_like(out), nuclei, None, 1, False)[..., 0] > 0
    out[nuc_edges] = (0, 255, 255)
    cv2.putText(out, f"{seg.n_cells} cells", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def run_chunk(job: tuple[str, tuple, str, str, list[str], bool]) -> list[dict]:
    """Segment and write the images of one chunk; one result row per image.

    Rows: ``{"ID", "ok", "error", "n_cells", "read_s", "segment_s", "write_s"}``.
    """
    spec, options, data_dir, out_dir, ids, with_overlay = job
    segmenter = _segmenter(spec, options)
    rows: dict[str, dict] = {}
    images, good = [], []
    for image_id in ids:
        t = time.perf_counter()
        try:
            images.append(read_image(data_dir, image_id, dtype="native"))  # full precision to the segmenter
            good.append(image_id)
            rows[image_id] = {"ID": image_id, "ok": True, "error": "", "read_s": time.perf_counter() - t}
        except Exception as err:  # one unreadable image must not stop the run
            rows[image_id] = {"ID": image_id, "ok": False, "error": f"read: {err}"}
    if good:
        t = time.perf_counter()
        try:
            segs: list[Segmentation | Exception] = list(segmenter.segment(images, good))
        except Exception:
            # Find the culprit: one image at a time, so the others still get their masks.
            segs = []
            for img, image_id in zip(images, good):
                try:
                    segs.append(segmenter.segment([img], [image_id])[0])
                except Exception as err:
                    segs.append(err)
        per_image = (time.perf_counter() - t) / len(good)
        for image_id, img, seg in zip(good, images, segs):
            row = rows[image_id]
            row["segment_s"] = per_image
            if isinstance(seg, Exception):
                row.update(ok=False, error=f"segment: {type(seg).__name__}: {seg}")
                continue
            t = time.perf_counter()
            try:
                if with_overlay:
                    viz.write_png(fs.join(out_dir, f"{image_id}_overlay.png"), overlay(img, seg))
                write_masks(out_dir, image_id, seg)
            except Exception as err:
                row.update(ok=False, error=f"write: {err}")
                continue
            row.update(n_cells=seg.n_cells, write_s=time.perf_counter() - t)
    return [rows[i] for i in ids]


def is_done(out_dir: str, image_id: str) -> bool:
    """Whether an image already has its final mask (written last by :func:`run_chunk`)."""
    return fs.exists(cell_mask_path(out_dir, image_id))


def segment_folder(spec: str, options: tuple[tuple[str, Any], ...], data_dir: str, out_dir: str, ids: Sequence[str],
                   workers: int = 1, batch: int = 0, overlays: bool = True) -> list[dict]:
    """Segment the images of ``ids`` not yet done in ``out_dir`` (masks, overlays, ``errors.csv``),
    ``batch`` images per segmenter call, in ``workers`` processes; returns a row per image segmented
    now. A segmenter with models (:func:`runs_on_accelerator`) runs in this process alone, 8 images
    per forward pass by default.

    >>> segment_folder("classical", (), "test/", "masks/", ["a", "b"])  # doctest: +SKIP
    """
    todo = [i for i in ids if not is_done(out_dir, i)]
    accelerated = runs_on_accelerator(spec)
    batch = batch or (8 if accelerated else 1)
    workers = 1 if accelerated else workers
    jobs = [(spec, options, data_dir, out_dir, todo[i : i + batch], overlays) for i in range(0, len(todo), batch)]
    rows: list[dict] = []
    with tqdm(total=len(todo), desc=f"segmenting ({spec.split(':')[0]})", unit="img") as bar, ExitStack() as stack:
        stream = map(run_chunk, jobs)
        if workers > 1:  # spawn: TensorFlow does not survive fork
            pool = stack.enter_context(mp.get_context("spawn").Pool(workers, initializer=die_with_parent))
            stream = pool.imap_unordered(run_chunk, jobs)
        for chunk_rows in stream:
            rows.extend(chunk_rows)
            bar.update(len(chunk_rows))
    failed = [r for r in rows if not r["ok"]]
    fs.write_text(fs.join(out_dir, "errors.csv"), pd.DataFrame(failed, columns=["ID", "error"]).to_csv(index=False))
    return rows
