"""Write, read and validate the competition's submission CSV.

Header ``ID,ImageWidth,ImageHeight,PredictionString``; a PredictionString repeats
``Label Confidence EncodedMask`` (see :mod:`hpa_tf.rle`). A cell listed for several classes
carries the same EncodedMask each time; it is encoded once.
"""

from __future__ import annotations

import csv
import io as _io
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hpa_tf import fs
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.rle import MaskDecodeError, encode_label_image, mask_runs

HEADER = ("ID", "ImageWidth", "ImageHeight", "PredictionString")


class SubmissionError(ValueError):
    """A malformed submission; the message names the file, the line and the ID."""


@dataclass
class ImagePrediction:
    """The detections of one image: distinct cell masks and (class, confidence, mask) triples.

    >>> p = ImagePrediction.from_scores("a", 4, 4, ["eNoLCAgIsAQABJ4Beg=="], np.full((1, 19), 0.5))
    >>> len(p.classes)
    19
    """

    image_id: str
    width: int
    height: int
    masks: list[str] = field(default_factory=list)
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    confidences: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    mask_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_scores(
        cls, image_id: str, width: int, height: int, masks: Sequence[str], scores: np.ndarray
    ) -> ImagePrediction:
        """One row per cell of ``scores`` (n_cells x 19); NaN entries are not listed."""
        scores = np.asarray(scores, np.float64).reshape(len(masks), NUM_CLASSES)
        cell, klass = np.nonzero(np.isfinite(scores))
        return cls(image_id, int(width), int(height), list(masks), klass, scores[cell, klass], cell)

    @classmethod
    def from_label_image(
        cls, image_id: str, labels: np.ndarray, scores: dict[int, np.ndarray]
    ) -> ImagePrediction:
        """Cells of an instance mask with ``scores[cell_id]`` (19 values, NaN = not listed).

        >>> lab = np.zeros((8, 8), np.uint16); lab[2:5, 2:5] = 1
        >>> ImagePrediction.from_label_image("a", lab, {1: np.eye(19)[3]}).classes.size
        19
        """
        encoded = encode_label_image(labels)
        ids = [i for i in sorted(scores) if i in encoded]
        mat = np.array([scores[i] for i in ids]).reshape(len(ids), NUM_CLASSES)
        h, w = labels.shape
        return cls.from_scores(image_id, w, h, [encoded[i] for i in ids], mat)

    def prediction_string(self) -> str:
        """The PredictionString of this image (empty when it has no detections)."""
        return " ".join(
            f"{int(c)} {_fmt(float(s))} {self.masks[int(m)]}"
            for c, s, m in zip(self.classes, self.confidences, self.mask_index)
        )


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def format_submission(predictions: Iterable[ImagePrediction]) -> str:
    """The whole CSV as text. ``format_submission([p]).splitlines()[0]`` is the header."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for p in predictions:
        writer.writerow([p.image_id, p.width, p.height, p.prediction_string()])
    return buf.getvalue()


def write_submission(path: str, predictions: Iterable[ImagePrediction]) -> None:
    """Write a submission CSV atomically (a killed run leaves the old file or none).

    >>> write_submission("out/submission.csv", preds)  # doctest: +SKIP
    """
    fs.write_text(path, format_submission(predictions))


def _column_linked_share(starts: np.ndarray, lengths: np.ndarray, height: int) -> float | None:
    """Of a mask's runs (column-major, columns ``height`` long), the share that touch a run of the
    column before: about 1 for a cell read at its true size, about 0 when width and height are
    swapped (each column is then shifted against the last). None when the mask is too small to say."""
    col, r0 = starts // height, starts % height
    r1 = r0 + lengths - 1
    inside = r1 < height
    col, r0, r1 = col[inside], r0[inside], r1[inside]
    later = col > col.min(initial=0)
    if col.size < 8 or later.sum() < 4:
        return None
    keys = col * height + r0
    j = np.searchsorted(keys, (col - 1) * height + r1, side="right") - 1
    j = np.clip(j, 0, None)
    linked = (col[j] == col - 1) & (r1[j] >= r0)
    return float(linked[later].mean())


def looks_transposed(encoded: str, height: int, width: int) -> bool | None:
    """Whether a mask of a ``width`` x ``height`` row reads as a cell only with width and height
    swapped; None when it cannot tell (a square image, a mask of a few pixels)."""
    if height == width:
        return None
    here = _column_linked_share(*mask_runs(encoded, height, width), height)
    swapped = _column_linked_share(*mask_runs(encoded, width, height), width)
    if here is None or swapped is None:
        return None
    return here < 0.5 and swapped >= 0.9


def parse_row(row: Sequence[str], where: str, size: tuple[int, int] | None = None) -> ImagePrediction:
    """One CSV row -> :class:`ImagePrediction`, with every field and mask checked. ``size``:
    the (width, height) the row must have (the sample submission's). A row whose width and height
    are swapped (against ``size``, or against its masks' shapes) is refused.

    >>> parse_row(["a", "4", "4", ""], "line 2").width
    4
    """
    if len(row) != 4:
        raise SubmissionError(f"{where}: expected 4 fields {HEADER}, got {len(row)}")
    image_id, w_str, h_str, pred = row
    if not image_id.strip():
        raise SubmissionError(f"{where}: empty ID")
    where = f"{where} (ID {image_id})"
    try:
        width, height = int(w_str), int(h_str)
    except ValueError:
        raise SubmissionError(f"{where}: ImageWidth/ImageHeight {w_str!r}/{h_str!r} are not integers") from None
    if width <= 0 or height <= 0:
        raise SubmissionError(f"{where}: image size {width}x{height} must be positive")
    if size is not None and (width, height) != tuple(size):
        swapped = (height, width) == tuple(size)
        raise SubmissionError(f"{where}: ImageWidth x ImageHeight {width}x{height}"
                              + (" are swapped:" if swapped else " differ from") + f" the sample submission's "
                              f"{size[0]}x{size[1]}")
    tokens = pred.split()
    if len(tokens) % 3:
        raise SubmissionError(
            f"{where}: PredictionString has {len(tokens)} tokens, not a multiple of 3 "
            "('Label Confidence EncodedMask' repeated)"
        )
    masks: dict[str, int] = {}
    classes, confs, index = [], [], []
    oriented = width == height  # one mask that can tell is enough
    for k in range(0, len(tokens), 3):
        lab, conf, mask = tokens[k : k + 3]
        det = f"{where}, detection {k // 3 + 1}"
        try:
            c = int(lab)
        except ValueError:
            raise SubmissionError(f"{det}: label {lab!r} is not an integer") from None
        if not 0 <= c < NUM_CLASSES:
            raise SubmissionError(f"{det}: label {c} is out of range 0..{NUM_CLASSES - 1}")
        try:
            s = float(conf)
        except ValueError:
            raise SubmissionError(f"{det}: confidence {conf!r} is not a number") from None
        if not math.isfinite(s):
            raise SubmissionError(f"{det}: confidence {conf!r} is not finite")
        if mask not in masks:
            try:
                mask_runs(mask, height, width)
            except MaskDecodeError as err:
                raise SubmissionError(f"{det}: bad EncodedMask ({err})") from None
            if not oriented:
                verdict = looks_transposed(mask, height, width)
                if verdict:
                    raise SubmissionError(f"{det}: the mask reads as a cell only as {height}x{width}: ImageWidth "
                                          f"and ImageHeight ({width}x{height}) are swapped")
                oriented = verdict is not None
            masks[mask] = len(masks)
        classes.append(c)
        confs.append(s)
        index.append(masks[mask])
    return ImagePrediction(
        image_id, width, height, list(masks),
        np.array(classes, np.int64), np.array(confs, np.float64), np.array(index, np.int64),
    )


def read_submission(path: str, expected_ids: Iterable[str] | None = None,
                    sizes: dict[str, tuple[int, int]] | None = None) -> list[ImagePrediction]:
    """Read and validate a submission CSV (a UTF-8 byte-order mark is fine); with ``expected_ids``
    also check the ID set, with ``sizes`` (ID -> (width, height), the sample submission's) each size.

    >>> preds = read_submission("submission.csv")  # doctest: +SKIP
    """
    text = fs.read_text(path)
    # A PredictionString of 100 cells x 19 classes at 3072 px runs to megabytes.
    csv.field_size_limit(sys.maxsize)
    reader = csv.reader(_io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != HEADER:
        raise SubmissionError(f"{path}: header must be {','.join(HEADER)}, got {header}")
    out: list[ImagePrediction] = []
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        pred = parse_row(row, f"{path} line {line}", (sizes or {}).get(row[0]) if row else None)
        if pred.image_id in seen:
            raise SubmissionError(f"{path} line {line}: ID {pred.image_id} appears more than once")
        seen.add(pred.image_id)
        out.append(pred)
    if expected_ids is not None:
        expected = set(expected_ids)
        missing, extra = sorted(expected - seen), sorted(seen - expected)
        if missing or extra:
            raise SubmissionError(
                f"{path}: {len(missing)} expected IDs missing (e.g. {missing[:3]}), "
                f"{len(extra)} unknown IDs (e.g. {extra[:3]})"
            )
    return out
