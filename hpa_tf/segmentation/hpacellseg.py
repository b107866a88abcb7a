"""Adapter to CellProfiling's HPA-Cell-Segmentation (the tool the competition's truth came from).

It is not on PyPI, pins old PyTorch, and fetches its two U-Net weight files on first use, so it is
imported only when this backend is chosen. Images go to it in batches (one call per batch per
model); 1728 px images need ``padding=True`` (its issue #16: sizes not divisible by 32 after
scaling), which this adapter turns on by itself for any such size.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpa_tf.segmentation.base import Segmentation

INSTALL = (
    "pip install https://github.com/CellProfiling/HPA-Cell-Segmentation/archive/master.zip "
    "(it needs PyTorch; on first use it downloads its nuclei and cell model weights, about 300 MB, "
    "to the paths given as nuclei_model/cell_model)"
)


def _import() -> tuple[Any, Any]:
    try:
        cellsegmentator = importlib.import_module("hpacellseg.cellsegmentator")
        utils = importlib.import_module("hpacellseg.utils")
    except ImportError as err:
        raise ImportError(f"the 'hpacellseg' backend needs HPA-Cell-Segmentation: {INSTALL}") from err
    return cellsegmentator, utils


def _needs_padding(shape: tuple[int, ...], scale: float) -> bool:
    return any(int(round(d * scale)) % 32 for d in shape[:2])


@dataclass
class HPACellSegSegmenter:
    """``HPACellSegSegmenter(nuclei_model="nuc.pth", cell_model="cell.pth").segment(images)``

    ``device="auto"`` uses CUDA when PyTorch sees a GPU.
    """

    nuclei_model: str = "./nuclei-model.pth"
    cell_model: str = "./cell-model.pth"
    scale_factor: float = 0.25
    device: str = "auto"
    batch_size: int = 8
    name: str = "hpacellseg"
    _models: dict = field(default_factory=dict, repr=False)

    def _segmentator(self, padding: bool) -> Any:
        if padding not in self._models:
            cellsegmentator, _ = _import()
            device = self.device
            if device == "auto":
                torch = importlib.import_module("torch")
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._models[padding] = cellsegmentator.CellSegmentator(
                self.nuclei_model, self.cell_model, scale_factor=self.scale_factor,
                device=device, padding=padding, multi_channel_model=True,
            )
        return self._models[padding]

    def segment(self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None) -> list[Segmentation]:
        _, utils = _import()
        out: list[Segmentation | None] = [None] * len(images)
        # Group by padding need, so that one model call serves a whole batch.
        groups: dict[bool, list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(_needs_padding(img.shape, self.scale_factor), []).append(i)
        for padding, idx in groups.items():
            seg = self._segmentator(padding)
            for start in range(0, len(idx), self.batch_size):
                batch = idx[start : start + self.batch_size]
                red = [images[i][..., 0] for i in batch]
                yellow = [images[i][..., 3] for i in batch]
                blue = [images[i][..., 2] for i in batch]
                nuc_pred = seg.pred_nuclei(blue)
                cell_pred = seg.pred_cells([red, yellow, blue])
                for i, n_p, c_p in zip(batch, nuc_pred, cell_pred):
                    nuclei, cells = utils.label_cell(n_p, c_p)
                    out[i] = Segmentation(np.asarray(nuclei, np.uint16), np.asarray(cells, np.uint16))
        return [s for s in out if s is not None]
