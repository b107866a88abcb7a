"""Score every cell of an image with one or more trained models (the accelerator half).

``Predictor.from_models(["image.keras", "cells.keras"])`` loads image-level and cell-bag models
(told apart by their inputs) and gives, per image, each model's image-level and cell-level
scores (:class:`ModelScores`), then one (n_cells, 19) answer by a rule of :mod:`combine`.

Each model brings its input contract (:mod:`hpa_tf.data.contract`): the inputs are cut as its
training records were cut, and brought to its input size inside the model call by the same step
as in training. Work from several images is gathered into fixed-size batches per model (whole
images, masked cell views, bags of cells padded to a fixed size), so a compiled call never sees a
new shape; with a ``tf.distribute`` strategy each batch is split across the replicas.

Cell-level scores of an image model come from its class activation map over each cell's mask, pooled
as the model pools the image (``cell_view="cam"``, :mod:`hpa_tf.models.cam`: no extra model call), or
from "one cell at a time" inputs: the image with every other pixel zeroed (``"masked"``), or the same
moved so the cell sits at the centre (``"centred"``, the 9th-place idea); ``"none"`` skips them. A
cell-bag model sees all cells of the image as one bag (padded cells are masked, so they change
nothing). A single-cell model scores each cell crop; its image-level score is its best cell's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from hpa_tf.data.contract import InputContract, to_model_size, to_record_depth
from hpa_tf.inference.combine import CELL_VIEWS, Combination, ModelScores, combine
from hpa_tf.inference.prepare import Prepared, PrepareSpec, prepare_array
from hpa_tf.inference.tta import transforms
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.models import CamScorer, contract_of, load_model, mask_weights
from hpa_tf.models.cam import sigmoid
from hpa_tf.rle import mask_area_border
from hpa_tf.segmentation import cell_segmenter
from hpa_tf.training.strategy import replica_compiled

BAG_SIZE = 128  # cells per bag in one call (HPA images hold up to 112); more cells: the next multiple


@dataclass
class ScoringModel:
    """A trained model with what prediction needs to know about it: its input contract."""

    model: keras.Model
    contract: InputContract
    name: str
    weight: float = 1.0

    @property
    def kind(self) -> str:
        return self.contract.kind

    @property
    def size(self) -> int:
        return self.contract.model_size

    @classmethod
    def wrap(cls, model: keras.Model | str, weight: float = 1.0, dtype: str = "float32") -> ScoringModel:
        """A ``.keras`` path or a loaded model. ``ScoringModel.wrap("runs/demo/model_image/best.keras")``"""
        name = str(model)
        if isinstance(model, str):
            model = load_model(model, dtype)  # float32 on CPU/GPU by default, whatever it was trained in
        else:
            name = model.name
        saved = contract_of(model)
        if isinstance(model.input, dict) and "cells" in model.input:
            kind, size = "cells", int(model.input["cells"].shape[-2])
        else:
            shape = model.inputs[0].shape
            if len(model.inputs) != 1 or len(shape) != 4 or shape[1] is None:
                raise ValueError(f"model {name}: inputs {[tuple(i.shape) for i in model.inputs]} are neither an image "
                                 "or single-cell model's (B, S, S, 4) nor a cell-bag model's {'cells', 'mask'}")
            single = saved.kind == "cell" if saved else model.name.startswith("cell_")
            kind, size = ("cell" if single else "image"), int(shape[1])
        contract = saved or InputContract.for_model(kind, size)
        if contract.kind != kind or contract.model_size != size:
            raise ValueError(f"model {name}: its input contract says {contract.kind} at {contract.model_size} px, "
                             f"its inputs are {kind} at {size} px; the file was altered after training")
        return cls(model, contract, name, weight)


def _pad(batch: np.ndarray, size: int) -> np.ndarray:
    return batch if len(batch) == size else np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])


class Predictor:
    """Segment, prepare and score images with a set of models.

    >>> p = Predictor.from_models(["image.keras", "cells.keras"], tta="flip")  # doctest: +SKIP
    >>> cells, cell_ids, probs = p.predict_image(image)  # doctest: +SKIP
    >>> probs.shape  # (number of cells, 19)  # doctest: +SKIP
    """

    def __init__(self, models: Sequence[ScoringModel], segmenter: str = "classical", tta: str = "none",
                 rule: str | Combination = "image_x_cell", cell_view: str = "masked", batch: int = 16,
                 strategy: tf.distribute.Strategy | None = None, jit: bool = False):
        if not models:
            raise ValueError("give at least one model")
        if cell_view not in CELL_VIEWS:
            raise ValueError(f"cell_view must be one of {CELL_VIEWS}, not {cell_view!r}")
        self.models, self.segmenter, self.tta = list(models), segmenter, tta
        self.rule, self.cell_view = Combination.parse(rule), cell_view
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        self.batch = -(-max(int(batch), 1) // self.replicas) * self.replicas  # whole per-replica batches
        self.jit = jit and not isinstance(strategy, tf.distribute.TPUStrategy)  # TPUs compile anyway
        self._transforms = transforms(tta)
        self._compiled: dict = {}
        self._cam: dict[str, CamScorer] = {}
        self._fns = [self._make_call(m) for m in self.models]

    @classmethod
    def from_models(cls, models: Sequence[keras.Model | str], weights: Sequence[float] | None = None,
                    strategy: tf.distribute.Strategy | None = None, dtype: str = "float32", **options) -> Predictor:
        """Models by path or object, with optional weights for the combination; loaded under
        ``strategy`` (its replicas then share every batch) in ``dtype``."""
        weights = [1.0] * len(models) if weights is None else list(weights)
        if len(weights) != len(models):
            raise ValueError(f"{len(weights)} weights for {len(models)} models")
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            wrapped = [ScoringModel.wrap(m, w, dtype) for m, w in zip(models, weights)]
        return cls(wrapped, strategy=strategy, **options)

    @property
    def weights(self) -> list[float]:
        return [m.weight for m in self.models]

    def prepare_spec(self, data_dir: str) -> PrepareSpec:
        """What the CPU side must cut for these models: their records' sizes."""
        image_sizes = tuple(sorted({m.contract.record_image_size for m in self.models if m.kind == "image"}))
        cell_sizes = tuple(sorted({m.contract.record_cell_size for m in self.models if m.kind in ("cells", "cell")}))
        depths = {m.contract.bit_depth for m in self.models}
        if len(depths) > 1:
            raise ValueError("the models were trained on records of different bit depths ("
                             + ", ".join(f"{m.name}: {m.contract.bit_depth}" for m in self.models)
                             + "): predict each depth in its own run")
        return PrepareSpec(data_dir, self.segmenter, image_sizes, cell_sizes, depths.pop() if depths else 8)

    # --- model calls ----------------------------------------------------------------------------
    def _make_call(self, m: ScoringModel):
        """A compiled call of one model on a fixed-size uint8 batch at its records' size."""
        model, size, cells = m.model, m.size, m.kind == "cells"
        if m.kind == "image" and self.cell_view == "cam":
            self._cam[m.name] = CamScorer(model)
            model = self._cam[m.name].model  # features and probabilities in one call

        def replica_fn(x):
            if cells:
                return model({"cells": to_model_size(x["cells"], size), "mask": x["mask"]}, training=False)
            return model(to_model_size(x, size), training=False)

        if self.strategy is None:
            return tf.function(replica_fn, jit_compile=self.jit, reduce_retracing=True)

        def run_replica(x):
            fn = replica_compiled(self._compiled, replica_fn, m.name) if self.jit else replica_fn
            return fn(x)

        @tf.function(reduce_retracing=True)
        def distributed(x):
            return self.strategy.run(run_replica, args=(x,))

        return distributed

    def _run(self, k: int, x):
        """Model ``k`` on a batch whose length divides by the replicas; numpy outputs."""
        fn = self._fns[k]
        if self.strategy is None:
            out = fn(x)
        else:
            per = len(x["cells"] if isinstance(x, dict) else x) // self.replicas

            def part(ctx):
                i = ctx.replica_id_in_sync_group
                return tf.nest.map_structure(lambda a: a[i * per : (i + 1) * per], x)

            out = fn(self.strategy.experimental_distribute_values_from_function(part))
            out = tf.nest.map_structure(lambda *parts: tf.concat(parts, 0),
                                        *self.strategy.experimental_local_results(out))
        return {key: v.numpy() for key, v in out.items()} if isinstance(out, dict) else out.numpy()

    def _image_scores(self, k: int, inputs: Iterator[np.ndarray], n: int) -> np.ndarray:
        """Mean probabilities over the TTA transforms of ``n`` uint8 images (S, S, 4), taken from
        ``inputs`` one full batch at a time (memory stays at one batch)."""
        total = np.zeros((n, NUM_CLASSES), np.float64)
        for start in range(0, n, self.batch):
            chunk = np.stack([next(inputs) for _ in range(min(self.batch, n - start))])
            for t in self._transforms:
                total[start : start + len(chunk)] += self._run(k, _pad(t(chunk), self.batch))[: len(chunk)]
        return total / len(self._transforms)

    def _cam_scores(self, k: int, prepared: Sequence[Prepared], size: int) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Whole-image probabilities and CAM x cell probabilities (mean over the TTA transforms; the
        mask goes through each transform with the image). A cell too small to show at this size
        keeps the image's probabilities."""
        scorer = self._cam[self.models[k].name]
        n = len(prepared)
        wholes = np.zeros((n, NUM_CLASSES))
        cells: list[np.ndarray | None] = [np.zeros((p.n_cells, NUM_CLASSES)) if p.n_cells else None for p in prepared]
        for start in range(0, n, self.batch):
            chunk = prepared[start : start + self.batch]
            images = np.stack([p.images[size] for p in chunk])
            masks = np.stack([p.small_masks[size] for p in chunk])[..., None]
            for t in self._transforms:
                out = self._run(k, _pad(t(images), self.batch))
                moved = t(masks)[..., 0]
                for i, p in enumerate(chunk):
                    wholes[start + i] += out["probs"][i]
                    if not p.n_cells:
                        continue
                    features = out["features"][i]
                    weights = mask_weights(moved[i], p.cell_ids, features.shape[:2])
                    probs = sigmoid(scorer.cell_logits(features, weights))
                    lost = weights.reshape(len(weights), -1).sum(axis=1) == 0
                    probs[lost] = out["probs"][i]
                    cells[start + i] += probs
        m = len(self._transforms)
        return wholes / m, [None if c is None else c / m for c in cells]

    def _bag_scores(self, k: int, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image (19,), cells (n, 19)) of one image's cells as one bag, padded to a fixed size."""
        n = len(crops)
        size = max(-(-n // BAG_SIZE), 1) * BAG_SIZE
        image_sum, cell_sum = np.zeros(NUM_CLASSES), np.zeros((n, NUM_CLASSES))
        for t in self._transforms:
            bag = np.zeros((self.replicas, size, *crops.shape[1:]), crops.dtype)  # one bag per replica, the others empty
            bag[0, :n] = t(crops)
            valid = np.zeros((self.replicas, size), np.float32)
            valid[0, :n] = 1.0
            res = self._run(k, {"cells": bag, "mask": valid})
            image_sum += res["image"][0]
            cell_sum += res["cells"][0, :n]
        return image_sum / len(self._transforms), cell_sum / len(self._transforms)

    def _cell_view(self, image: np.ndarray, mask: np.ndarray, cell_id: int) -> np.ndarray:
        """The image with every pixel outside the cell zeroed (moved to the centre if asked)."""
        inside = mask == cell_id
        view = image * inside[..., None]
        if self.cell_view == "centred":
            ys, xs = np.nonzero(inside)
            size = image.shape[0]
            dy = size // 2 - (int(ys.min()) + int(ys.max())) // 2
            dx = size // 2 - (int(xs.min()) + int(xs.max())) // 2
            view = np.roll(view, (dy, dx), axis=(0, 1))
        return view

    # --- scoring --------------------------------------------------------------------------------
    def score_many(self, prepared: Sequence[Prepared]) -> list[list[ModelScores]]:
        """Each model's image-level and cell-level probabilities on several prepared images; the
        images and cell views of all of them share the model's batches."""
        out: list[list[ModelScores]] = [[] for _ in prepared]
        for k, m in enumerate(self.models):
            if m.kind == "cell":
                crops = [p.crops[m.contract.record_cell_size] for p in prepared]
                starts = np.cumsum([0] + [len(c) for c in crops])
                scores = self._image_scores(k, (c for image in crops for c in image), int(starts[-1]))
                for i, p in enumerate(prepared):
                    mine = scores[starts[i] : starts[i + 1]]
                    out[i].append(ModelScores(mine.max(axis=0) if p.n_cells else np.zeros(NUM_CLASSES),
                                              mine if p.n_cells else None))
                continue
            if m.kind == "cells":
                for i, p in enumerate(prepared):
                    if p.n_cells == 0:
                        out[i].append(ModelScores(np.zeros(NUM_CLASSES), None))
                    else:
                        out[i].append(ModelScores(*self._bag_scores(k, p.crops[m.contract.record_cell_size])))
                continue
            size = m.contract.record_image_size
            if self.cell_view == "cam":
                wholes, cam_cells = self._cam_scores(k, prepared, size)
                for i in range(len(prepared)):
                    out[i].append(ModelScores(wholes[i], cam_cells[i]))
                continue
            wholes = self._image_scores(k, iter([p.images[size] for p in prepared]), len(prepared))
            cells: list[np.ndarray | None] = [None] * len(prepared)
            if self.cell_view != "none":
                owners = []  # (image, row) of every cell still visible at this size
                for i, p in enumerate(prepared):
                    present = np.bincount(p.small_masks[size].ravel(), minlength=int(p.cell_ids.max(initial=0)) + 1)
                    owners += [(i, j) for j, cid in enumerate(p.cell_ids) if present[cid]]
                views = (self._cell_view(prepared[i].images[size], prepared[i].small_masks[size], prepared[i].cell_ids[j])
                         for i, j in owners)
                scores = self._image_scores(k, views, len(owners))
                for i, p in enumerate(prepared):
                    if p.n_cells:
                        cells[i] = np.tile(wholes[i], (p.n_cells, 1))  # cells lost at this size keep the image's scores
                for (i, j), row in zip(owners, scores):
                    cells[i][j] = row
            for i in range(len(prepared)):
                out[i].append(ModelScores(wholes[i], cells[i]))
        return out

    def score(self, prepared: Prepared) -> list[ModelScores]:
        """Each model's image-level and cell-level probabilities on one prepared image."""
        return self.score_many([prepared])[0]

    def combine(self, scores: Sequence[ModelScores], prepared: Prepared) -> np.ndarray:
        """The (n_cells, 19) answer of one prepared image under this predictor's combination and
        weights (rank averaging needs a whole test set: :func:`hpa_tf.inference.runner.assemble`)."""
        if self.rule.average == "rank":
            raise ValueError("rank averaging ranks the scores over a whole test set, not one image: predict a folder "
                             "(predict.py) or combine the cached scores with hpa_tf.inference.runner.assemble")
        geometry = {}
        if self.rule.needs_geometry:
            sides = [mask_area_border(m, prepared.height, prepared.width) for m in prepared.masks]
            geometry = {"area": np.array([a for a, _ in sides]), "border": np.array([b for _, b in sides])}
        return combine(scores, prepared.n_cells, self.rule, self.weights, **geometry)

    def predict_image(self, image: np.ndarray, image_id: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment and score one (H, W, 4) image (uint8, uint16 or float in [0, 1]): ``(cell mask,
        cell_ids, probs (n, 19))``."""
        seg = cell_segmenter(self.segmenter).segment([image], [image_id])[0]
        spec = self.prepare_spec("")
        prepared = prepare_array(to_record_depth(image, spec.bit_depth), seg, spec, image_id)
        return seg.cells, prepared.cell_ids, self.combine(self.score(prepared), prepared)


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
