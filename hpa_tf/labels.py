"""The 19 HPA single-cell classes, label-string parsing and multi-hot conversion.

Label strings come in two forms and both are accepted everywhere:
the 2021 competition's ``0|5|16`` and the 2018 competition's ``0 5 16``.
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

_SEPARATORS = re.compile(r"[|\s,]+")


class LabelError(ValueError):
    """A label string that cannot be parsed; the message names the row and the value."""


def parse_labels(value: object, row: object = None) -> list[int]:
    """Parse one label cell into a sorted list of unique class ids.

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
                f"label {tok!r}{where} (value {value!r}) is not an integer class id 0..{NUM_CLASSES - 1}"
            ) from None
        if not 0 <= cls < NUM_CLASSES:
            raise LabelError(
                f"label {cls}{where} (value {value!r}) is out of range: class ids are 0..{NUM_CLASSES - 1}"
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
