"""Turn the models' outputs into one score per cell and class, by a named rule.

Each model gives an image-level vector (19,) and, when it can, per-cell scores (n, 19):
- image model: the whole image -> image level; its CAM over each cell, or one cell at a time -> cell level;
- cell-bag model: its per-cell head -> cell level; its pooled head -> image level;
- single-cell model: each cell -> cell level; the best cell -> image level.

A :class:`Combination` says how, in four steps:

1. ``average`` across models (weights per model; models without a cell level are left out of the
   cell average): ``mean`` of the probabilities, or ``rank``: each model's scores replaced by their
   rank among all the test set's images (image level) or cells (cell level), per class, before the
   mean (rank averaging: models whose probabilities live on other scales count alike). Ranks need
   the whole test set, so they are taken over the run's cache (:func:`to_ranks`), not one image.
2. ``rule``: ``image_x_cell`` (1st and 2nd place): mean image score x mean cell score; ``blend``
   (4th place): ``cell_weight`` x cell + (1 - ``cell_weight``) x image; ``geometric``: their
   weighted geometric mean, image ** (1 - ``cell_weight``) x cell ** ``cell_weight`` (0.5 ranks
   cells as ``image_x_cell`` does, before step 3 and 4 act on the scores; a smaller weight lets
   the image level decide more of the order, and a cell's own score order the cells of an image;
   the default of ``predict.py`` and the job, :data:`DEFAULT_RULE`); ``cell``: the cell scores alone; ``image``:
   the image score painted on every cell (a baseline: it cannot tell cells apart).
3. ``negative``: the Negative class as the models say (``model``), as the chance that no other
   class is there, the product of (1 - p) over the 18 others (``complement``), or the mean of the
   two (``mean``).
4. Cells that are less likely to be one whole true cell rank lower: every score of a cell smaller
   than ``small_area`` x the image's median cell area is multiplied by ``small_factor``, and of a
   cell cut by the image's edge by ``border_factor`` (4th, 7th and 12th place: on real images a
   fragment or a cut cell often matches no annotated cell; SynthHPA's truth keeps every cut cell, so
   there it does not pay, ``docs/recipe.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np

from hpa_tf.labels import NEGATIVE, NUM_CLASSES

RULES = ("image_x_cell", "blend", "geometric", "cell", "image")
# The cell level's share when none is given, for the rules that weigh it (chosen on held-out
# SynthHPA images, docs/recipe.md).
CELL_WEIGHTS = {"blend": 0.5, "geometric": 0.15}
# The rule of Combination(), combine(), the Predictor, predict.py and the job (docs/recipe.md).
DEFAULT_RULE = "geometric"
NEGATIVE_RULES = ("model", "complement", "mean")
AVERAGES = ("mean", "rank")
CELL_VIEWS = ("masked", "centred", "cam", "none")  # how an image model scores cells (see predictor)
# what gives the cell-level scores the rules but ``image`` need
CELL_SOURCES = "a cell-bag or single-cell model, or an image model with a cell view other than 'none'"


@dataclass
class ModelScores:
    """One model's output on one image: ``image`` (19,) and ``cells`` (n, 19) or None."""

    image: np.ndarray
    cells: np.ndarray | None


@dataclass(frozen=True)
class Combination:
    """How the models' scores become one (n_cells, 19) answer (``predict.py``'s combination flags).

    >>> Combination("blend", cell_weight=0.7).describe()
    'blend 0.7 cell + 0.3 image'
    >>> Combination().describe()
    'geometric image^0.85 x cell^0.15'

    ``cell_weight``: the cell level's share in [0, 1], for ``blend`` and ``geometric`` only; None
    (the default) stands for the rule's :data:`CELL_WEIGHTS` entry (blend 0.5: the 4th place's 0.7
    measured lower; geometric 0.15), which :attr:`weight` gives. Given with another rule it is an
    error (that rule weighs no share).
    """

    rule: str = DEFAULT_RULE
    cell_weight: float | None = None
    negative: str = "model"
    small_area: float = 0.0  # fraction of the image's median cell area; 0: no cell counts as small
    small_factor: float = 1.0
    border_factor: float = 1.0
    average: str = "mean"

    def __post_init__(self) -> None:
        for name, value, allowed in (("rule", self.rule, RULES), ("negative", self.negative, NEGATIVE_RULES),
                                     ("average", self.average, AVERAGES)):
            if value not in allowed:
                raise ValueError(f"combine {name} must be one of {allowed}, not {value!r}")
        if self.rule not in CELL_WEIGHTS and self.cell_weight is not None:
            raise ValueError(f"combine cell_weight ({self.cell_weight}) applies to the rules {' and '.join(CELL_WEIGHTS)} "
                             f"only; {self.rule!r} weighs no cell share: leave it out")
        for name in ("cell_weight", "small_factor", "border_factor"):
            value = getattr(self, name)
            if value is None and name == "cell_weight":
                continue
            if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value <= 1.0:
                raise ValueError(f"combine {name} must be a number in [0, 1], not {value!r}")
        if self.small_area < 0:
            raise ValueError(f"combine small_area must be >= 0 (a fraction of the median cell area), not {self.small_area}")

    @classmethod
    def parse(cls, value: str | dict | Combination) -> Combination:
        """A rule name, the dict of a saved run (``asdict``), or a Combination. Runs saved before
        the weight became the blend's and geometric rule's alone recorded 0.5 with every rule: it
        is dropped there.

        >>> Combination.parse("cell").rule
        'cell'
        >>> Combination.parse({"rule": "image_x_cell", "cell_weight": 0.5}).cell_weight is None
        True
        """
        if isinstance(value, Combination):
            return value
        if isinstance(value, str):
            return cls(value)
        if value.get("rule", DEFAULT_RULE) not in CELL_WEIGHTS:
            value = {k: v for k, v in value.items() if k != "cell_weight"}
        return cls(**value)

    @property
    def weight(self) -> float | None:
        """The cell level's share this combination uses: ``cell_weight``, or the rule's default;
        None for a rule that weighs none.

        >>> Combination("blend").weight, Combination("geometric", cell_weight=0.3).weight, Combination("cell").weight
        (0.5, 0.3, None)
        """
        return CELL_WEIGHTS.get(self.rule) if self.cell_weight is None else float(self.cell_weight) + 0.0  # -0 is 0

    @property
    def needs_geometry(self) -> bool:
        """Whether each cell's area and border are needed (a small-cell or border factor is set)."""
        return (self.small_area > 0 and self.small_factor < 1) or self.border_factor < 1

    def describe(self) -> str:
        """A short human-readable name (the results tables' rows)."""
        w = self.weight
        parts = [f"blend {w:g} cell + {1 - w:g} image" if self.rule == "blend"
                 else f"geometric image^{1 - w:g} x cell^{w:g}" if self.rule == "geometric"
                 else {"image_x_cell": "image x cell", "cell": "cell", "image": "image"}[self.rule]]
        if self.average == "rank":
            parts.append("rank-averaged")
        if self.negative != "model":
            parts.append(f"Negative {self.negative}")
        if self.small_area > 0 and self.small_factor < 1:
            parts.append(f"cells < {self.small_area:g} median area x {self.small_factor:g}")
        if self.border_factor < 1:
            parts.append(f"edge cells x {self.border_factor:g}")
        return ", ".join(parts)


def _mean(parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    parts = [(w, p) for w, p in parts if w > 0]
    total = sum(w for w, _ in parts)
    return sum(w * p for w, p in parts) / total


def negative_complement(probs: np.ndarray) -> np.ndarray:
    """The chance that none of the 18 other classes is there: prod (1 - p) over them, per cell.

    >>> p = np.zeros((1, 19)); p[0, 0] = 0.5; p[0, 1] = 0.5
    >>> float(negative_complement(p)[0])
    0.25
    """
    others = np.delete(probs, NEGATIVE, axis=-1)
    return np.prod(1.0 - others, axis=-1)


def cell_factors(combination: Combination, area: np.ndarray, border: np.ndarray) -> np.ndarray:
    """(n,) multipliers of each cell's scores: small cells (against the image's median area) and
    cells cut by the image's edge.

    >>> c = Combination(small_area=0.5, small_factor=0.5, border_factor=0.8)
    >>> cell_factors(c, np.array([100, 100, 10]), np.array([0, 1, 1])).tolist()
    [1.0, 0.8, 0.4]
    """
    factors = np.ones(len(area))
    if len(area) and combination.small_area > 0:
        small = np.asarray(area) < combination.small_area * np.median(area)
        factors[small] *= combination.small_factor
    factors[np.asarray(border, bool)] *= combination.border_factor
    return factors


def combine(scores: Sequence[ModelScores], n_cells: int, rule: str | Combination = DEFAULT_RULE,
            weights: Sequence[float] | None = None, area: np.ndarray | None = None,
            border: np.ndarray | None = None) -> np.ndarray:
    """(n_cells, 19) scores in [0, 1] of one image. ``area`` (pixels) and ``border`` (1: cut by the
    edge) of each cell are needed when the combination lowers small or edge cells. With
    ``average="rank"`` the scores must already be ranks (:func:`to_ranks`).

    >>> a = ModelScores(np.full(19, 0.5), np.full((2, 19), 0.8))
    >>> float(combine([a], 2, "image_x_cell")[0, 0])
    0.4
    >>> float(combine([a], 2, Combination("blend", cell_weight=0.7))[0, 0])
    0.71
    >>> round(float(combine([a], 2, Combination("geometric", cell_weight=0.5))[0, 0]), 4)  # sqrt(0.5 x 0.8)
    0.6325
    """
    combination = Combination.parse(rule)
    weights = [1.0] * len(scores) if weights is None else list(weights)
    if len(weights) != len(scores):
        raise ValueError(f"{len(weights)} weights for {len(scores)} models")
    if min(weights, default=1.0) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights {weights}: each must be >= 0 and not all 0")
    if n_cells == 0:
        return np.zeros((0, NUM_CLASSES))
    image = _mean([(w, s.image) for w, s in zip(weights, scores)])
    if combination.rule == "image":
        probs = np.tile(image, (n_cells, 1))
    else:
        cell_parts = [(w, s.cells) for w, s in zip(weights, scores) if s.cells is not None and w > 0]
        if not cell_parts:
            raise ValueError(f"rule {combination.rule!r} needs a model with cell-level scores and a weight above 0 "
                             f"({CELL_SOURCES})")
        cells = _mean(cell_parts)
        w = combination.weight
        probs = {"image_x_cell": lambda: cells * image, "cell": lambda: cells,
                 "blend": lambda: w * cells + (1 - w) * image,
                 "geometric": lambda: image ** (1 - w) * cells**w}[combination.rule]()
    if combination.negative != "model":
        probs = probs.copy()
        complement = negative_complement(probs)
        probs[:, NEGATIVE] = complement if combination.negative == "complement" else (probs[:, NEGATIVE] + complement) / 2
    if combination.needs_geometry:
        if area is None or border is None or len(area) != n_cells or len(border) != n_cells:
            raise ValueError(f"the combination ({combination.describe()}) lowers small or edge cells: give the area "
                             f"and border of each of the {n_cells} cells")
        probs = probs * cell_factors(combination, area, border)[:, None]
    return probs


def cell_geometry(combination: Combination, masks: Sequence[str], height: int, width: int) -> dict[str, np.ndarray]:
    """``area`` (pixels) and ``border`` (cut by the image's edge) of each encoded cell mask, as
    :func:`combine` takes them, when ``combination`` needs them; else ``{}``."""
    if not combination.needs_geometry:
        return {}
    from hpa_tf.rle import mask_area_border

    sides = [mask_area_border(m, height, width) for m in masks]
    return {"area": np.array([a for a, _ in sides]), "border": np.array([b for _, b in sides])}


def to_ranks(images: Sequence[Sequence[ModelScores]]) -> list[list[ModelScores]]:
    """Each model's scores over a whole test set (``images[i][k]``: model k on image i) replaced by
    their rank in (0, 1] per class: image level among the images, cell level among all cells.
    Ties share their mean rank. A model a time budget dropped for an image (``None``) stays None
    there and is ranked among the images it scored.

    >>> lo, hi = ModelScores(np.full(19, 0.1), np.array([[0.2] * 19])), ModelScores(np.full(19, 0.9), None)
    >>> [float(m[0].image[0]) for m in to_ranks([[lo], [hi]])]
    [0.5, 1.0]
    """
    if not images:
        return []
    n_models = len(images[0])
    out: list[list[ModelScores]] = [[] for _ in images]
    for k in range(n_models):
        scored = [i for i, scores in enumerate(images) if scores[k] is not None]
        image_ranks = dict(zip(scored, _ranks(np.stack([images[i][k].image for i in scored])))) if scored else {}
        has_cells = [i for i in scored if images[i][k].cells is not None]
        stacked = [images[i][k].cells for i in has_cells]
        cell_ranks = _ranks(np.concatenate(stacked)) if stacked else np.zeros((0, NUM_CLASSES))
        bounds = np.cumsum([0] + [len(c) for c in stacked])
        by_image = {i: cell_ranks[bounds[j] : bounds[j + 1]] for j, i in enumerate(has_cells)}
        for i in range(len(images)):
            out[i].append(ModelScores(image_ranks[i], by_image.get(i)) if i in image_ranks else None)
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each row in its column, scaled to (0, 1]; ties share their mean rank.

    >>> _ranks(np.array([[0.3], [0.1], [0.3]]))[:, 0].tolist()
    [0.8333333333333334, 0.3333333333333333, 0.8333333333333334]
    """
    out = np.empty(values.shape, np.float64)
    for c in range(values.shape[1]):
        _, inverse, counts = np.unique(values[:, c], return_inverse=True, return_counts=True)
        out[:, c] = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    return out / max(len(values), 1)
