"""Score every cell of an image with one or more trained models (the accelerator half).

``Predictor.from_models(["image.keras", "cells.keras"])`` loads image-level and cell-bag models
(told apart by their inputs) and gives, per image, each model's image-level and cell-level
scores (:class:`ModelScores`), then one (n_cells, 19) answer by a rule of :mod:`combine`.

Cell-level scores of an image model come from "one cell at a time" inputs: the image at the
model's input size with every other pixel zeroed (``cell_view="masked"``), or the same moved so
the cell sits at the centre (``"centred"``, the 9th-place idea); ``"none"`` skips them. A cell-bag
model sees all cells of the image as one bag (padded cells are masked, so they change nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from hpa_tf.inference.combine import ModelScores, combine
from hpa_tf.inference.prepare import Prepared, PrepareSpec, prepare_array
from hpa_tf.inference.tta import transforms
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.models import load_model
from hpa_tf.segmentation import cell_segmenter

CELL_VIEWS = ("masked", "centred", "none")
_BAG_PAD = 16  # bags are padded to a multiple of this: few shapes, few retraces


@dataclass
class ScoringModel:
    """A trained model with what prediction needs to know about it."""

    model: keras.Model
    kind: str  # "image" or "cells"
    size: int  # input side in pixels
    name: str
    weight: float = 1.0

    @classmethod
    def wrap(cls, model: keras.Model | str, weight: float = 1.0) -> ScoringModel:
        """A ``.keras`` path or a loaded model. ``ScoringModel.wrap("runs/demo/model_image/best.keras")``"""
        name = str(model)
        if isinstance(model, str):
            model = load_model(model)  # float32 on CPU/GPU, whatever precision it was trained in
        else:
            name = model.name
        if isinstance(model.input, dict) and "cells" in model.input:
            return cls(model, "cells", int(model.input["cells"].shape[-2]), name, weight)
        shape = model.inputs[0].shape
        if len(model.inputs) != 1 or len(shape) != 4 or shape[1] is None:
            raise ValueError(f"model {name}: inputs {[tuple(i.shape) for i in model.inputs]} are neither an image "
                             "model's (B, S, S, 4) nor a cell-bag model's {'cells', 'mask'}")
        return cls(model, "image", int(shape[1]), name, weight)


class Predictor:
    """Segment, prepare and score images with a set of models.

    >>> p = Predictor.from_models(["image.keras", "cells.keras"], tta="flip")  # doctest: +SKIP
    >>> cells, cell_ids, probs = p.predict_image(image)  # doctest: +SKIP
    >>> probs.shape  # (number of cells, 19)  # doctest: +SKIP
    """

    def __init__(self, models: Sequence[ScoringModel], segmenter: str = "classical", tta: str = "none",
                 rule: str = "image_x_cell", cell_view: str = "masked", batch: int = 16):
        if not models:
            raise ValueError("give at least one model")
        if cell_view not in CELL_VIEWS:
            raise ValueError(f"cell_view must be one of {CELL_VIEWS}, not {cell_view!r}")
        self.models, self.segmenter, self.tta = list(models), segmenter, tta
        self.rule, self.cell_view, self.batch = rule, cell_view, max(int(batch), 1)
        self._transforms = transforms(tta)
        self._fns = [tf.function(lambda x, m=m.model: m(x, training=False), reduce_retracing=True) for m in self.models]

    @classmethod
    def from_models(cls, models: Sequence[keras.Model | str], weights: Sequence[float] | None = None,
                    **options) -> Predictor:
        """Models by path or object, with optional weights for the combination."""
        weights = [1.0] * len(models) if weights is None else list(weights)
        if len(weights) != len(models):
            raise ValueError(f"{len(weights)} weights for {len(models)} models")
        return cls([ScoringModel.wrap(m, w) for m, w in zip(models, weights)], **options)

    @property
    def weights(self) -> list[float]:
        return [m.weight for m in self.models]

    def prepare_spec(self, data_dir: str) -> PrepareSpec:
        """What the CPU side must cut for these models."""
        image_sizes = tuple(sorted({m.size for m in self.models if m.kind == "image"}))
        cell_sizes = tuple(sorted({m.size for m in self.models if m.kind == "cells"}))
        return PrepareSpec(data_dir, self.segmenter, image_sizes, cell_sizes)

    def _run(self, k: int, x) -> dict | np.ndarray:
        out = self._fns[k](x)
        return {key: v.numpy() for key, v in out.items()} if isinstance(out, dict) else out.numpy()

    def _image_batches(self, k: int, x: np.ndarray) -> np.ndarray:
        """Mean probabilities over the TTA transforms of uint8 images (N, S, S, 4), in fixed-size batches."""
        n = len(x)
        total = np.zeros((n, NUM_CLASSES), np.float64)
        for t in self._transforms:
            for start in range(0, n, self.batch):
                chunk = t(x[start : start + self.batch]).astype(np.float32) / 255.0
                pad = self.batch - len(chunk) if n > self.batch else 0  # one batch shape for the cell views
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
                total[start : start + self.batch] += self._run(k, chunk)[: len(chunk) - pad]
        return total / len(self._transforms)

    def _cell_views(self, image: np.ndarray, mask: np.ndarray, cell_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One input per cell (other pixels zeroed; centred if asked) and which cells are visible at this size."""
        size = image.shape[0]
        views = np.zeros((len(cell_ids), *image.shape), np.uint8)
        seen = np.zeros(len(cell_ids), bool)
        for i, cid in enumerate(cell_ids):
            inside = mask == cid
            if not inside.any():  # a cell too small to survive the resize
                continue
            seen[i] = True
            views[i] = image * inside[..., None]
            if self.cell_view == "centred":
                ys, xs = np.nonzero(inside)
                dy = size // 2 - (int(ys.min()) + int(ys.max())) // 2
                dx = size // 2 - (int(xs.min()) + int(xs.max())) // 2
                views[i] = np.roll(views[i], (dy, dx), axis=(0, 1))
        return views, seen

    def score(self, prepared: Prepared) -> list[ModelScores]:
        """Each model's image-level and cell-level probabilities on one prepared image."""
        out = []
        n = prepared.n_cells
        for k, m in enumerate(self.models):
            if m.kind == "image":
                image = prepared.images[m.size]
                whole = self._image_batches(k, image[None])[0]
                cells = None
                if self.cell_view != "none" and n:
                    views, seen = self._cell_views(image, prepared.small_masks[m.size], prepared.cell_ids)
                    cells = np.tile(whole, (n, 1))  # cells lost at this size keep the image's scores
                    if seen.any():
                        cells[seen] = self._image_batches(k, views[seen])
                out.append(ModelScores(whole, cells))
                continue
            crops = prepared.crops[m.size]
            if n == 0:
                out.append(ModelScores(np.zeros(NUM_CLASSES), None))
                continue
            n_pad = -(-n // _BAG_PAD) * _BAG_PAD
            image_sum, cell_sum = np.zeros(NUM_CLASSES), np.zeros((n, NUM_CLASSES))
            for t in self._transforms:
                bag = np.zeros((1, n_pad, m.size, m.size, 4), np.float32)
                bag[0, :n] = t(crops).astype(np.float32) / 255.0
                valid = np.zeros((1, n_pad), np.float32)
                valid[0, :n] = 1.0
                res = self._run(k, {"cells": bag, "mask": valid})
                image_sum += res["image"][0]
                cell_sum += res["cells"][0, :n]
            out.append(ModelScores(image_sum / len(self._transforms), cell_sum / len(self._transforms)))
        return out

    def combine(self, scores: Sequence[ModelScores], n_cells: int) -> np.ndarray:
        """The (n_cells, 19) answer under this predictor's rule and weights."""
        return combine(scores, n_cells, self.rule, self.weights)

    def predict_image(self, image: np.ndarray, image_id: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment and score one (H, W, 4) uint8 image: ``(cell mask, cell_ids, probs (n, 19))``."""
        seg = cell_segmenter(self.segmenter).segment([image], [image_id])[0]
        prepared = prepare_array(image, seg, self.prepare_spec(""), image_id)
        return seg.cells, prepared.cell_ids, self.combine(self.score(prepared), prepared.n_cells)


def top_class_overlay(image: np.ndarray, cells: np.ndarray, cell_ids: np.ndarray, probs: np.ndarray,
                      path: str | None = None) -> np.ndarray:
    """The image (BGR composite) with each cell outlined in the colour of its top class, written to
    ``path`` as PNG when given: ``top_class_overlay(image, *predictor.predict_image(image), "a.png")``.

    >>> lab = np.zeros((16, 16), np.uint16); lab[2:9, 2:9] = 1
    >>> top_class_overlay(np.zeros((16, 16, 4), np.uint8), lab, np.array([1]), np.eye(19)[[4]]).shape
    (16, 16, 3)
    """
    from hpa_tf import viz

    top = {int(c): int(np.argmax(p)) for c, p in zip(cell_ids, probs)}
    out = viz.draw_cells(viz.composite(image), cells, top, max(1, image.shape[0] // 512))
    if path:
        viz.write_png(path, out)
    return out
