"""The 19 HPA single-cell classes, label-string parsing and multi-hot conversion, and the 2018
competition's 28 classes mapped onto them.

Label strings come in two forms and both are accepted everywhere:
the 2021 competition's ``0|5|16`` and the 2018 competition's ``0 5 16``. The separator says
nothing about the class ids: a 2018 table's ids are 2018 classes (see :data:`CLASSES_2018` and
:func:`convert_2018`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
NUM_CLASSES = len(CLASS_NAMES)
NEGATIVE = 18

# Images per class in the 2021 training set (TASK.md); used to shape SynthHPA's label mix.
TRAIN_IMAGE_COUNTS: tuple[int, ...] = (
    8797, 1095, 2451, 1262, 1425, 1792, 775, 1846, 964, 1011,
    818, 78, 1734, 3216, 2013, 252, 5685, 621, 34,
)

# The 2018 competition ("Human Protein Atlas Image Classification") numbered 28 classes.
CLASSES_2018: tuple[str, ...] = (
    "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center", "Nuclear speckles",
    "Nuclear bodies", "Endoplasmic reticulum", "Golgi apparatus", "Peroxisomes", "Endosomes", "Lysosomes",
    "Intermediate filaments", "Actin filaments", "Focal adhesion sites", "Microtubules", "Microtubule ends",
    "Cytokinetic bridge", "Mitotic spindle", "Microtubule organizing center", "Centrosome", "Lipid droplets",
    "Plasma membrane", "Cell junctions", "Mitochondria", "Aggresome", "Cytosol", "Cytoplasmic bodies",
    "Rods & rings",
)
# 2018 class id -> 2021 class id, by meaning. Identical classes keep theirs; the classes HPA merged
# for 2021 go where the 2021 class descriptions put them: peroxisomes, endosomes, lysosomes, lipid
# droplets and cytoplasmic bodies into "Vesicles and punctate cytosolic patterns"; the microtubule
# organizing center (HPA's later "centriolar satellite") into Centrosome; cell junctions into Plasma
# membrane; focal adhesion sites into Actin filaments and microtubule ends into Microtubules (HPA's
# own hierarchy). Cytokinetic bridge and Rods & rings have no 2021 class: dropped (None).
MAP_2018_TO_2021: dict[int, int | None] = {
    0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7,
    8: 17, 9: 17, 10: 17, 11: 8, 12: 9, 13: 9, 14: 10, 15: 10, 16: None, 17: 11,
    18: 12, 19: 12, 20: 17, 21: 13, 22: 13, 23: 14, 24: 15, 25: 16, 26: 17, 27: None,
}

_SEPARATORS = re.compile(r"[|\s,]+")


class LabelError(ValueError):
    """A label string that cannot be parsed; the message names the row and the value."""


def parse_labels(value: object, row: object = None, n_classes: int = NUM_CLASSES) -> list[int]:
    """Parse one label cell into a sorted list of unique class ids in ``0 .. n_classes - 1``.

    Accepts ``"0|5|16"`` (2021), ``"0 5 16"`` (2018), a single int, or a list of ints.
    ``row`` (an ID or a line number) only makes the error message useful.

    >>> parse_labels("16|0|5")
    [0, 5, 16]
    >>> parse_labels("0 5 16")
    [0, 5, 16]
    """
    where = f" in row {row!r}" if row is not None else ""
    if isinstance(value, (list, tuple, np.ndarray)):
        tokens: list[object] = list(value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        tokens = [int(value)]
    elif isinstance(value, str):
        tokens = [t for t in _SEPARATORS.split(value.strip()) if t]
    else:
        raise LabelError(f"label value {value!r}{where} is not a label string like '0|5|16'")
    if not tokens:
        raise LabelError(f"empty label{where}: every image needs at least one class (18 = Negative)")
    out = set()
    for tok in tokens:
        try:
            cls = int(str(tok))
        except ValueError:
            raise LabelError(
                f"label {tok!r}{where} (value {value!r}) is not an integer class id 0..{n_classes - 1}"
            ) from None
        if not 0 <= cls < n_classes:
            hint = " (a 2018 table? its header is Id,Target)" if n_classes == NUM_CLASSES and cls < len(CLASSES_2018) else ""
            raise LabelError(
                f"label {cls}{where} (value {value!r}) is out of range: class ids are 0..{n_classes - 1}{hint}"
            )
        out.add(cls)
    return sorted(out)


def format_labels(labels: Iterable[int]) -> str:
    """Join class ids the 2021 way.

    >>> format_labels([16, 0])
    '0|16'
    """
    return "|".join(str(c) for c in sorted(set(int(c) for c in labels)))


def to_multi_hot(labels: Sequence[int] | str, dtype: type = np.float32) -> np.ndarray:
    """Class ids (or a label string) -> a length-19 multi-hot vector.

    >>> to_multi_hot("0|2").nonzero()[0].tolist()
    [0, 2]
    """
    ids = parse_labels(labels) if isinstance(labels, str) else parse_labels(list(labels))
    vec = np.zeros(NUM_CLASSES, dtype=dtype)
    vec[ids] = 1
    return vec


def from_multi_hot(vec: np.ndarray, threshold: float = 0.5) -> list[int]:
    """A multi-hot (or probability) vector -> the class ids above ``threshold``.

    >>> from_multi_hot(np.eye(19)[3])
    [3]
    """
    vec = np.asarray(vec)
    if vec.shape[-1] != NUM_CLASSES:
        raise LabelError(f"expected a vector of {NUM_CLASSES} classes, got shape {vec.shape}")
    return np.flatnonzero(vec > threshold).tolist()


def convert_2018(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """2018 class ids -> (2021 class ids, the 2018 ids that have no 2021 class).

    >>> convert_2018([8, 11, 25, 27])  # Peroxisomes, Intermediate filaments, Cytosol, Rods & rings
    ([8, 16, 17], [27])
    """
    kept, dropped = set(), []
    for c in labels:
        if not 0 <= int(c) < len(CLASSES_2018):
            raise LabelError(f"2018 label {c} is out of range: the 2018 competition's class ids are 0..27")
        new = MAP_2018_TO_2021[int(c)]
        if new is None:
            dropped.append(int(c))
        else:
            kept.add(new)
    return sorted(kept), dropped
