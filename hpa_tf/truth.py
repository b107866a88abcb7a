"""Cell-level ground truth in the format SynthHPA writes and other tools read.

A truth folder holds:
- ``{ID}_cells.png``: uint16 instance mask at the image's resolution, 0 = background, cells 1..n;
- ``cells.csv``: columns ``ID,split,cell_id,Label`` (a cell's labels joined by ``|``; a cell
  that shows none of its image's labels is ``18``, Negative);
- ``images.csv``: columns ``ID,split,ImageWidth,ImageHeight,Label`` (the image-level labels).
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hpa_tf import fs
from hpa_tf.io.png import read_label_png, write_label_png
from hpa_tf.labels import parse_labels

CELLS_CSV = "cells.csv"
IMAGES_CSV = "images.csv"


class TruthError(ValueError):
    """A truth folder that is incomplete or inconsistent."""


def mask_path(truth_dir: str, image_id: str) -> str:
    """``truth_dir/{ID}_cells.png``."""
    return fs.join(truth_dir, f"{image_id}_cells.png")


def nuclei_path(truth_dir: str, image_id: str) -> str:
    """``truth_dir/{ID}_nuclei.png``."""
    return fs.join(truth_dir, f"{image_id}_nuclei.png")


def write_cell_mask(truth_dir: str, image_id: str, labels: np.ndarray) -> None:
    """Write a uint16 instance mask as lossless PNG. ``write_cell_mask("truth", "a", lab)``"""
    write_label_png(mask_path(truth_dir, image_id), labels)


def read_cell_mask(truth_dir: str, image_id: str) -> np.ndarray:
    """Read ``{ID}_cells.png`` as a 2-D uint16 array. ``read_cell_mask("truth", "a")``"""
    path = mask_path(truth_dir, image_id)
    if not fs.exists(path):
        raise TruthError(f"{path}: missing cell mask for image {image_id}")
    return read_label_png(path)


@dataclass
class Truth:
    """The truth of one split: per image its size, labels and per-cell labels.

    >>> t = Truth.load("synth/truth", split="test")  # doctest: +SKIP
    >>> t.cell_labels["some-id"][3]  # doctest: +SKIP
    [0, 16]
    """

    truth_dir: str
    images: pd.DataFrame  # ID, split, ImageWidth, ImageHeight, Label, labels
    cell_labels: dict[str, dict[int, list[int]]]

    @classmethod
    def load(cls, truth_dir: str, split: str | None = None) -> Truth:
        """Read ``cells.csv`` and ``images.csv``; ``split`` keeps one split (``train``/``test``)."""
        tables = {}
        for name in (CELLS_CSV, IMAGES_CSV):
            path = fs.join(truth_dir, name)
            if not fs.exists(path):
                raise TruthError(f"{path} is missing: is {truth_dir!r} a truth folder (cells.csv, images.csv, *_cells.png)?")
            tables[name] = pd.read_csv(_io.StringIO(fs.read_text(path)), dtype={"ID": str, "Label": str})
        cells, images = tables[CELLS_CSV], tables[IMAGES_CSV]
        if split is not None:
            cells, images = cells[cells["split"] == split], images[images["split"] == split]
            if images.empty:
                raise TruthError(f"{truth_dir}: no images of split {split!r}")
        images = images.reset_index(drop=True).copy()
        images["labels"] = [parse_labels(v, row=i) for i, v in zip(images["ID"], images["Label"])]
        per_image: dict[str, dict[int, list[int]]] = {i: {} for i in images["ID"]}
        for image_id, cid, lab in zip(cells["ID"], cells["cell_id"], cells["Label"]):
            if image_id not in per_image:
                raise TruthError(f"{truth_dir}/{CELLS_CSV}: cell of unknown image {image_id}")
            per_image[image_id][int(cid)] = parse_labels(lab, row=f"{image_id} cell {cid}")
        return cls(truth_dir, images, per_image)

    def mask(self, image_id: str) -> np.ndarray:
        """The instance mask of one image."""
        return read_cell_mask(self.truth_dir, image_id)
