"""Masks segmented once and saved: ``{ID}_cellmask.png`` (+ ``{ID}_nucleimask.png``) or ``{ID}.npz``.

The PNG names are those of the HPA Cell Atlas and of ``python -m hpa_tf.segmentation``; an
``.npz`` holds arrays ``cells`` and optionally ``nuclei``.
"""

from __future__ import annotations

import io as _io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpa_tf import fs
from hpa_tf.io.png import read_label_png, write_label_png
from hpa_tf.segmentation.base import Segmentation


class MaskNotFoundError(FileNotFoundError):
    """No precomputed mask for an image."""


def cell_mask_path(folder: str, image_id: str) -> str:
    return fs.join(folder, f"{image_id}_cellmask.png")


def nuclei_mask_path(folder: str, image_id: str) -> str:
    return fs.join(folder, f"{image_id}_nucleimask.png")


def read_masks(folder: str, image_id: str, with_nuclei: bool = True) -> Segmentation:
    """Read one image's saved masks (``with_nuclei=False``: cells only, nuclei left empty).

    ``read_masks("masks", "abc").cells``
    """
    png = cell_mask_path(folder, image_id)
    if fs.exists(png):
        cells = read_label_png(png)
        nuc_path = nuclei_mask_path(folder, image_id)
        nuclei = read_label_png(nuc_path) if with_nuclei and fs.exists(nuc_path) else np.zeros_like(cells)
        return Segmentation(nuclei, cells)
    npz = fs.join(folder, f"{image_id}.npz")
    if fs.exists(npz):
        with np.load(_io.BytesIO(fs.read_bytes(npz))) as data:
            if "cells" not in data:
                raise ValueError(f"{npz}: no array named 'cells' (found {sorted(data.files)})")
            cells = data["cells"].astype(np.uint16)
            nuclei = data["nuclei"].astype(np.uint16) if "nuclei" in data else np.zeros_like(cells)
        return Segmentation(nuclei, cells)
    raise MaskNotFoundError(
        f"image {image_id}: no precomputed mask in {folder} (looked for {image_id}_cellmask.png and "
        f"{image_id}.npz); segment it first with `python -m hpa_tf.segmentation --data ... --out {folder}`"
    )


def write_masks(folder: str, image_id: str, seg: Segmentation) -> None:
    """Write ``{ID}_nucleimask.png`` then ``{ID}_cellmask.png`` (the cell mask last marks completion)."""
    write_label_png(nuclei_mask_path(folder, image_id), seg.nuclei)
    write_label_png(cell_mask_path(folder, image_id), seg.cells)


@dataclass
class PrecomputedSegmenter:
    """Reads masks from ``folder``; a mask whose size differs from its image is an error."""

    folder: str
    with_nuclei: bool = True
    name: str = "precomputed"

    def segment(self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None) -> list[Segmentation]:
        if image_ids is None or len(image_ids) != len(images):
            raise ValueError("the precomputed backend needs the image IDs to find their masks")
        out = []
        for img, image_id in zip(images, image_ids):
            seg = read_masks(self.folder, image_id, self.with_nuclei)
            if seg.cells.shape != img.shape[:2]:
                raise ValueError(
                    f"image {image_id}: mask in {self.folder} is {seg.cells.shape}, image is {img.shape[:2]}"
                )
            out.append(seg)
        return out
