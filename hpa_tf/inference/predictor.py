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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from hpa_tf.data.contract import InputContract, to_model_size, to_record_depth
from hpa_tf.inference.combine import CELL_VIEWS, DEFAULT_RULE, Combination, ModelScores, cell_geometry, combine
from hpa_tf.inference.plan import Plan
from hpa_tf.inference.prepare import Prepared, PrepareSpec, prepare_array
from hpa_tf.inference.tta import transforms
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.models import CamScorer, contract_of, load_model, mask_weights
from hpa_tf.models.cam import sigmoid
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
                 rule: str | Combination = DEFAULT_RULE, cell_view: str = "masked", batch: int = 16,
                 strategy: tf.distribute.Strategy | None = None, jit: bool = False,
                 clock: Callable[[], float] = time.monotonic):
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
        self._cam: dict[int, CamScorer] = {}
        self._fns: dict[tuple[int, bool], Callable] = {}
        for k, m in enumerate(self.models):  # now: a model unfit for its view fails before any image
            self._fn(k, m.kind == "image" and cell_view == "cam")
        self.clock = clock
        self.seconds: dict[tuple[int, str], float] = {}  # (model, part) -> seconds of its calls (the time budget)

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
    def _cam_scorer(self, k: int) -> CamScorer:
        if k not in self._cam:
            self._cam[k] = CamScorer(self.models[k].model)
        return self._cam[k]

    def _has_cam_head(self, k: int) -> bool:
        try:
            self._cam_scorer(k)
        except ValueError:
            return False
        return True

    def _fn(self, k: int, cam: bool = False) -> Callable:
        if (k, cam) not in self._fns:
            self._fns[(k, cam)] = self._make_call(k, cam)
        return self._fns[(k, cam)]

    def _make_call(self, k: int, cam: bool):
        """A compiled call of model ``k`` on a fixed-size uint8 batch at its records' size; ``cam``:
        its features and probabilities in one call."""
        m = self.models[k]
        model, size, cells = m.model, m.size, m.kind == "cells"
        if cam:
            model = self._cam_scorer(k).model

        def replica_fn(x):
            if cells:
                return model({"cells": to_model_size(x["cells"], size), "mask": x["mask"]}, training=False)
            return model(to_model_size(x, size), training=False)

        if self.strategy is None:
            return tf.function(replica_fn, jit_compile=self.jit, reduce_retracing=True)

        def run_replica(x):
            name = f"{m.name}/cam" if cam else m.name
            fn = replica_compiled(self._compiled, replica_fn, name) if self.jit else replica_fn
            return fn(x)

        @tf.function(reduce_retracing=True)
        def distributed(x):
            return self.strategy.run(run_replica, args=(x,))

        return distributed

    def _run(self, k: int, x, cam: bool = False):
        """Model ``k`` on a batch whose length divides by the replicas; numpy outputs."""
        fn = self._fn(k, cam)
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

    def _spent(self, k: int, part: str, start: float) -> float:
        """Add the seconds since ``start`` to model ``k``'s ``part`` (base, tta, view, view_tta); now."""
        now = self.clock()
        self.seconds[(k, part)] = self.seconds.get((k, part), 0.0) + now - start
        return now

    def _image_scores(self, k: int, inputs: Iterator[np.ndarray], n: int, tta: bool = True,
                      part: str = "base") -> np.ndarray:
        """Mean probabilities over the TTA transforms (only the identity without ``tta``) of ``n``
        uint8 images (S, S, 4), taken from ``inputs`` one full batch at a time (memory stays at one
        batch). The identity's seconds go to ``part`` (base or view), the other transforms' to tta or view_tta."""
        chosen = self._transforms if tta else self._transforms[:1]
        total = np.zeros((n, NUM_CLASSES), np.float64)
        for start in range(0, n, self.batch):
            t0 = self.clock()
            chunk = np.stack([next(inputs) for _ in range(min(self.batch, n - start))])
            for j, t in enumerate(chosen):
                total[start : start + len(chunk)] += self._run(k, _pad(t(chunk), self.batch))[: len(chunk)]
                t0 = self._spent(k, part if j == 0 else "tta" if part == "base" else f"{part}_tta", t0)
        return total / len(chosen)

    def _cam_scores(self, k: int, prepared: Sequence[Prepared], size: int,
                    tta: bool = True) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Whole-image probabilities and CAM x cell probabilities (mean over the TTA transforms; the
        mask goes through each transform with the image). A cell too small to show at this size
        keeps the image's probabilities."""
        scorer = self._cam_scorer(k)
        chosen = self._transforms if tta else self._transforms[:1]
        n = len(prepared)
        wholes = np.zeros((n, NUM_CLASSES))
        cells: list[np.ndarray | None] = [np.zeros((p.n_cells, NUM_CLASSES)) if p.n_cells else None for p in prepared]
        for start in range(0, n, self.batch):
            t0 = self.clock()
            chunk = prepared[start : start + self.batch]
            images = np.stack([p.images[size] for p in chunk])
            masks = np.stack([p.small_masks[size] for p in chunk])[..., None]
            for j, t in enumerate(chosen):
                out = self._run(k, _pad(t(images), self.batch), cam=True)
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
                t0 = self._spent(k, "tta" if j else "base", t0)
        m = len(chosen)
        return wholes / m, [None if c is None else c / m for c in cells]

    def _bag_scores(self, k: int, crops: np.ndarray, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(image (19,), cells (n, 19)) of one image's cells as one bag, padded to a fixed size."""
        n = len(crops)
        size = max(-(-n // BAG_SIZE), 1) * BAG_SIZE
        image_sum, cell_sum = np.zeros(NUM_CLASSES), np.zeros((n, NUM_CLASSES))
        chosen = self._transforms if tta else self._transforms[:1]
        t0 = self.clock()
        for j, t in enumerate(chosen):
            bag = np.zeros((self.replicas, size, *crops.shape[1:]), crops.dtype)  # one bag per replica, the others empty
            bag[0, :n] = t(crops)
            valid = np.zeros((self.replicas, size), np.float32)
            valid[0, :n] = 1.0
            res = self._run(k, {"cells": bag, "mask": valid})
            image_sum += res["image"][0]
            cell_sum += res["cells"][0, :n]
            t0 = self._spent(k, "tta" if j else "base", t0)
        return image_sum / len(chosen), cell_sum / len(chosen)

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
    def view_of(self, k: int, plan: Plan | None = None) -> str:
        """How image model ``k`` scores cells under ``plan``: the run's cell view; without cell views
        (a time budget dropped them) by its CAM, or not at all when it has no CAM head."""
        if plan is None or plan.cell_view or self.cell_view in ("cam", "none"):
            return self.cell_view
        return "cam" if self._has_cam_head(k) else "none"

    def gives_cells(self, plan: Plan | None = None) -> bool:
        """Whether a model ``plan`` keeps, weighted above 0, gives cell-level scores (the rules but
        ``image`` need one: :func:`~hpa_tf.inference.combine.combine` leaves weight-0 models out)."""
        return any(m.kind != "image" or self.view_of(k, plan) != "none"
                   for k, m in enumerate(self.models) if self.weights[k] > 0 and (plan is None or plan.uses(k)))

    def score_many(self, prepared: Sequence[Prepared], plan: Plan | None = None) -> list[list[ModelScores | None]]:
        """Each model's image-level and cell-level probabilities on several prepared images; the
        images and cell views of all of them share the model's batches. ``plan`` (a time budget's)
        leaves out TTA, the cell views or models: a model it drops gives None."""
        out: list[list[ModelScores | None]] = [[] for _ in prepared]
        tta = plan is None or plan.tta
        for k, m in enumerate(self.models):
            if plan is not None and not plan.uses(k):
                for scores in out:
                    scores.append(None)
                continue
            if m.kind == "cell":
                crops = [p.crops[m.contract.record_cell_size] for p in prepared]
                starts = np.cumsum([0] + [len(c) for c in crops])
                scores = self._image_scores(k, (c for image in crops for c in image), int(starts[-1]), tta)
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
                        out[i].append(ModelScores(*self._bag_scores(k, p.crops[m.contract.record_cell_size], tta)))
                continue
            size = m.contract.record_image_size
            view = self.view_of(k, plan)
            if view == "cam":
                wholes, cam_cells = self._cam_scores(k, prepared, size, tta)
                for i in range(len(prepared)):
                    out[i].append(ModelScores(wholes[i], cam_cells[i]))
                continue
            wholes = self._image_scores(k, iter([p.images[size] for p in prepared]), len(prepared), tta)
            cells: list[np.ndarray | None] = [None] * len(prepared)
            if view != "none":
                owners = []  # (image, row) of every cell still visible at this size
                for i, p in enumerate(prepared):
                    present = np.bincount(p.small_masks[size].ravel(), minlength=int(p.cell_ids.max(initial=0)) + 1)
                    owners += [(i, j) for j, cid in enumerate(p.cell_ids) if present[cid]]
                views = (self._cell_view(prepared[i].images[size], prepared[i].small_masks[size], prepared[i].cell_ids[j])
                         for i, j in owners)
                scores = self._image_scores(k, views, len(owners), tta, part="view")
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
        geometry = cell_geometry(self.rule, prepared.masks, prepared.height, prepared.width)
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
