"""SynthHPA: one synthetic HPA-format image with cell-level truth.

What makes it a real challenge rather than a toy:
- touching cells of varied size and shape, cells cut by the border, rounded dividing cells;
- landmarks like HPA's: textured blue nuclei, red microtubules, a yellow ER network;
- a distinct green pattern per class (see :mod:`hpa_tf.synthetic.patterns`);
- 1-3 labels per image, drawn with frequencies following the competition's training set but
  flattened (count ** 0.4) so that rare classes appear (``label_mix="flattened"``, the default);
  or ``label_mix="kaggle2021"``: the label sets of the real 2021 ``train.csv``, drawn as often as
  there (Nucleoplasm on 40 % of images, Nucleoplasm + Cytosol the commonest pair, the Mitotic
  spindle on 1 image in 280: the rare classes as rare as in the competition);
- single-cell heterogeneity: each image label has its own expression probability and every
  cell draws it independently (at least one cell expresses each label); a cell that expresses
  none is Negative (18); the Mitotic spindle shows only in dividing cells;
  ``varying_share``: the share of image labels that vary so (1, the default: all of them; the
  Mitotic spindle always varies); the others are shown by every cell that can show them, as
  most proteins are on real fields
  (then the image-level labels given to every cell are nearly the answer, and finding which
  classes an image holds is most of the task);
- per-cell expression level, per-image exposure, blur and signal-dependent noise;
- ``texture_scale``: the size of the green patterns' strokes, dots and blobs (and of the
  landmarks') against the cells: 1 (the default) the original, 0.5 half as fine, nearer a real
  2048 px field's filaments and puncta on its larger cells. Blur (the optics) does not change.

Everything is drawn from ``numpy.random.SeedSequence([seed, split, index, stream])``, so an
image depends only on those numbers, not on worker count or order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import cv2
import numpy as np

from hpa_tf.labels import NEGATIVE, NUM_CLASSES, TRAIN_IMAGE_COUNTS
from hpa_tf.synthetic import patterns
from hpa_tf.synthetic.layout import Cell, make_layout, smooth_noise

MITOTIC_SPINDLE = 11
SPLITS = ("train", "test")
_LABEL_COUNT_P = (0.5, 0.35, 0.15)
_NEGATIVE_IMAGE_P = 0.04
_FLATTEN = 0.4


@dataclass
class SynthImage:
    """One generated image: pixels (HxWx4 uint8, RGBY), instance masks and labels."""

    image_id: str
    image: np.ndarray | None  # None when only the truth was regenerated
    cells: np.ndarray  # uint16 instance mask, 0 = background
    nuclei: np.ndarray  # uint16, nucleus i belongs to cell i
    cell_labels: list[list[int]]  # cell i+1 -> its classes ([18] if it shows none)
    labels: list[int]  # image-level labels


def class_probabilities() -> np.ndarray:
    """Probability of each specific class (0..17) when an image label is drawn."""
    w = np.asarray(TRAIN_IMAGE_COUNTS[:NEGATIVE], np.float64) ** _FLATTEN
    return w / w.sum()


LABEL_MIXES = ("flattened", "kaggle2021")


@functools.cache
def kaggle2021_label_sets() -> tuple[list[list[int]], np.ndarray]:
    """The distinct label sets of the Kaggle 2021 ``train.csv`` and the probability of each (its
    share of the 21,806 images), from the table shipped in this package."""
    import io

    import pandas as pd

    text = resources.files("hpa_tf.synthetic").joinpath("kaggle2021_label_sets.csv").read_text()
    table = pd.read_csv(io.StringIO(text), comment="#", dtype={"Label": str})
    counts = table["images"].to_numpy(np.float64)
    return [[int(c) for c in s.split("|")] for s in table["Label"]], counts / counts.sum()


def sample_image_labels(rng: np.random.Generator, label_mix: str = "flattened") -> list[int]:
    """1-3 distinct classes, or ``[18]`` alone for a Negative image (``flattened``); or one of the
    real 2021 label sets as often as in the competition (``kaggle2021``).

    >>> sample_image_labels(np.random.default_rng(1))
    [1, 4, 16]
    """
    if label_mix == "kaggle2021":
        sets, p = kaggle2021_label_sets()
        return sets[int(rng.choice(len(sets), p=p))]
    if label_mix != "flattened":
        raise ValueError(f"label_mix {label_mix!r} is not one of {', '.join(LABEL_MIXES)}")
    if rng.random() < _NEGATIVE_IMAGE_P:
        return [NEGATIVE]
    k = int(rng.choice(3, p=_LABEL_COUNT_P)) + 1
    return sorted(int(c) for c in rng.choice(NEGATIVE, size=k, replace=False, p=class_probabilities()))


NUCLEAR_CLASSES = frozenset(range(6))  # Nucleoplasm .. Nuclear bodies


def can_show(cell: Cell, label: int) -> bool:
    """Whether a cell can display a class: a nuclear pattern needs a visible nucleus, a
    cytoplasmic one visible cytoplasm, the spindle a dividing cell inside the image. A cell
    that cannot show a class never gets it, so every truth label is visible in the pixels."""
    if label == MITOTIC_SPINDLE:
        return cell.spindle_visible
    if label in NUCLEAR_CLASSES:
        return cell.nucleus.sum() >= 0.2 * np.pi * cell.nucleus_radius**2 / (5.0 if cell.mitotic else 1.5)
    return cell.cytoplasm.sum() >= 0.2 * cell.mask.sum()


def assign_cell_labels(rng: np.random.Generator, labels: list[int], cells: list[Cell],
                       varying_share: float = 1.0) -> list[list[int]]:
    """Which cells express which image labels (heterogeneity); cells with none are Negative.
    A label varies between cells with probability ``varying_share``; one that does not is
    expressed by every cell that can show it."""
    n = len(cells)
    expressed = [[] for _ in range(n)]
    if labels == [NEGATIVE] or n == 0:
        return [[NEGATIVE] for _ in range(n)]
    for lab in labels:
        eligible = np.array([can_show(c, lab) for c in cells])
        if not eligible.any():
            continue
        p = 0.9 if lab == MITOTIC_SPINDLE else rng.uniform(0.3, 1.0)
        on = eligible & (rng.random(n) < p)
        if varying_share < 1.0 and lab != MITOTIC_SPINDLE and rng.random() >= varying_share:
            on = eligible  # a steady label (drawn after the varying one's, so varying_share=1 draws as before)
        if not on.any():
            on[rng.choice(np.flatnonzero(eligible))] = True
        for i in np.flatnonzero(on):
            expressed[i].append(lab)
    return [sorted(e) if e else [NEGATIVE] for e in expressed]


def _draw_id(rng: np.random.Generator) -> str:
    h = rng.integers(0, 256, 16, dtype=np.uint8).tobytes().hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def image_id(seed: int, split: str, index: int) -> str:
    """The ID image ``index`` of ``split`` gets, without generating it (UUID-shaped like HPA's).

    >>> len(image_id(0, "train", 0))
    36
    """
    return _draw_id(_rng(seed, split, index, _LAYOUT))


_LAYOUT, _PIXELS, _SIZE = range(3)  # independent random streams of one image


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def pick_size(seed: int, split: str, index: int, sizes: list[int]) -> int:
    """The size of image ``index`` when a dataset mixes ``sizes``.

    >>> pick_size(0, "test", 3, [2048])
    2048
    """
    return int(sizes[_rng(seed, split, index, _SIZE).integers(len(sizes))])


def generate(seed: int, split: str, index: int, size: int, render: bool = True, label_mix: str = "flattened",
             texture_scale: float = 1.0, varying_share: float = 1.0) -> SynthImage:
    """Generate image ``index`` of ``split`` for ``seed``, ``size`` x ``size`` pixels, with the
    ``label_mix``, ``texture_scale`` and ``varying_share`` (see the module docstring).

    ``render=False`` regenerates only the ID, labels and masks (identical to a full run):
    layout and labels use their own random stream, pixels another.

    >>> img = generate(0, "train", 0, 256)
    >>> img.image.shape, int(img.cells.max()) == len(img.cell_labels)
    ((256, 256, 4), True)
    """
    rng = _rng(seed, split, index, _LAYOUT)
    image_id = _draw_id(rng)
    labels = sample_image_labels(rng, label_mix)
    cell_map, cells = make_layout(rng, size, n_mitotic_min=2 if MITOTIC_SPINDLE in labels else 0)
    cell_labels = assign_cell_labels(rng, labels, cells, varying_share)
    # A label whose only eligible cells were squeezed out cannot be shown: drop it.
    shown = sorted({c for cl in cell_labels for c in cl if c != NEGATIVE}) or [NEGATIVE]
    nuclei = np.zeros_like(cell_map)
    for k, cell in enumerate(cells, start=1):
        nuclei[cell.slices][cell.nucleus] = k
    image = _render(_rng(seed, split, index, _PIXELS), size, cells, cell_labels, texture_scale) if render else None
    return SynthImage(image_id, image, cell_map, nuclei, cell_labels, shown)


def _render(rng: np.random.Generator, size: int, cells: list[Cell], cell_labels: list[list[int]],
            texture_scale: float = 1.0) -> np.ndarray:
    optics = size / 1024.0
    s = optics * texture_scale  # the patterns' scale; blur and noise grain stay the optics'
    tex = np.clip(smooth_noise(rng, (size, size), 3.0 * s), -2, 2) / 2.0
    er = np.exp(-((smooth_noise(rng, (size, size), 9.0 * s) / 0.3) ** 2))
    planes = np.zeros((4, size, size), np.float32)  # red, green, blue, yellow
    level = {c: rng.uniform(0.55, 1.0) for c in range(NUM_CLASSES)}
    exposure = rng.uniform(0.6, 1.0, 4)
    for cell, labs in zip(cells, cell_labels):
        sl = cell.slices
        t, e = tex[sl], er[sl]
        landmark = rng.lognormal(0.0, 0.2)
        red = patterns.red_microtubules(cell, rng, s, t) * 0.55 * landmark
        blue = patterns.blue_nucleus(cell, rng, s, t) * 0.75 * rng.lognormal(0.0, 0.15)
        yellow = patterns.yellow_er(cell, rng, s, t, e) * 0.6 * landmark
        green = 0.03 * cell.mask + 0.02 * t  # non-specific background of every cell
        for c in labs:
            if c == NEGATIVE:
                continue
            fn = patterns.GREEN_PATTERNS[c]
            args = (cell, rng, s, t, e) if c == 6 else (cell, rng, s, t)
            green = green + fn(*args) * level[c] * rng.lognormal(0.0, 0.35)
        for k, plane in enumerate((red, green, blue, yellow)):
            np.copyto(planes[k][sl], plane, where=cell.mask)  # cells never overlap
    out = np.empty((size, size, 4), np.uint8)
    sigma = 0.9 * optics
    noise = rng.standard_normal((size + 64, size + 64), dtype=np.float32)
    for k in range(4):
        p = cv2.GaussianBlur(planes[k], (0, 0), sigma)
        p *= exposure[k]
        # Shot-like noise growing with the signal (every pattern is >= 0, so sqrt is safe).
        # One noise field at four offsets: independent-looking per channel at a quarter of the cost.
        oy, ox = rng.integers(0, 64, 2)
        amp = cv2.sqrt(p)
        amp *= 0.03
        amp += 0.006
        amp *= noise[oy : oy + size, ox : ox + size]
        p += amp
        # saturate_cast to uint8 in one pass: (p + 0.01) * 255, clipped and rounded.
        out[..., k] = cv2.addWeighted(p, 255.0, p, 0.0, 2.55, dtype=cv2.CV_8U)
    return out
