"""Reference submissions built from the truth: what the metric gives when the masks are perfect.

- ``image-labels``: every true cell gets every label of its image, confidence 1. This is the
  "oracle image labels" row: knowing each test image's labels and painting them on every cell.
  It loses exactly what single-cell heterogeneity takes away.
- ``perfect``: every true cell gets its own labels, confidence 1 (mAP 1.0 by construction).

With ``masks`` (a folder of predicted masks, ``python -m hpa_tf.segmentation``'s output) the same
answers are painted on the predicted cells instead: ``perfect`` gives a predicted cell the labels
of the true cell it matches at IoU >= 0.6 and leaves out cells that match none. That is the
ceiling a segmentation leaves to any classifier.

Each image is read back through :func:`hpa_tf.io.read_image` (the same path ``predict.py``
takes), its size checked against its mask, and rows follow ``sample_submission.csv``.

    python -m hpa_tf.baselines --data synth --split test --kind image-labels --out image_labels.csv
"""

from __future__ import annotations

import argparse
import io as _io
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from hpa_tf import fs
from hpa_tf.cli import run
from hpa_tf.io import read_image
from hpa_tf.labels import NUM_CLASSES
from hpa_tf.metrics import IOU_THRESHOLD
from hpa_tf.segmentation.precomputed import read_masks
from hpa_tf.segmentation.quality import iou_matrix
from hpa_tf.submission import ImagePrediction, write_submission
from hpa_tf.truth import Truth, TruthError

KINDS = ("image-labels", "perfect")


def _scores(labels: list[int]) -> np.ndarray:
    s = np.full(NUM_CLASSES, np.nan)
    s[labels] = 1.0
    return s


def oracle_predictions(
    truth: Truth, kind: str, data_dir: str | None = None, order: list[str] | None = None,
    masks: str | None = None,
) -> list[ImagePrediction]:
    """Submissions from the truth; ``data_dir`` (the split's image folder) reads each image back;
    ``masks`` (a folder of predicted masks) puts the answers on predicted cells.

    >>> preds = oracle_predictions(Truth.load("synth/truth", "test"), "perfect")  # doctest: +SKIP
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    image_labels = dict(zip(truth.images["ID"], truth.images["labels"]))
    ids = order if order is not None else list(truth.images["ID"])
    out = []
    for image_id in tqdm(ids, desc=f"oracle {kind}", unit="img"):
        mask = truth.mask(image_id)
        if data_dir is not None:
            try:
                img = read_image(data_dir, image_id)
            except (ValueError, OSError) as err:  # the oracle needs the truth only: one bad file stops nothing
                print(f"warning: image {image_id} cannot be read ({err}); its truth is used as it is")
                img = None
            if img is not None and img.shape[:2] != mask.shape:
                raise TruthError(f"image {image_id}: pixels are {img.shape[:2]} but its truth mask is {mask.shape}")
        cells = truth.cell_labels[image_id]
        if masks is not None:
            try:
                predicted = read_masks(masks, image_id).cells
            except (ValueError, OSError) as err:  # the segmenter could not read the image: no cells, as predict.py
                print(f"warning: image {image_id} has no predicted mask ({err}); it gets no cells")
                predicted = np.zeros_like(mask)
            if predicted.shape != mask.shape:
                raise TruthError(f"image {image_id}: predicted mask is {predicted.shape}, truth is {mask.shape}")
            iou = iou_matrix(mask, predicted)
            ids = [int(p) for p in np.unique(predicted) if p]
            if kind == "perfect":
                best = {p: int(np.argmax(iou[:, p])) for p in ids}
                scores = {p: _scores(cells[t]) for p, t in best.items() if t in cells and iou[t, p] >= IOU_THRESHOLD}
            else:
                scores = {p: _scores(image_labels[image_id]) for p in ids}
            out.append(ImagePrediction.from_label_image(image_id, predicted, scores))
            continue
        if kind == "perfect":
            scores = {cid: _scores(labs) for cid, labs in cells.items()}
        else:
            scores = {cid: _scores(image_labels[image_id]) for cid in cells}
        out.append(ImagePrediction.from_label_image(image_id, mask, scores))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpa_tf.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a SynthHPA folder (train/, test/, truth/, sample_submission.csv)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--kind", choices=KINDS, default="image-labels")
    parser.add_argument("--masks", help="put the answers on these predicted masks (python -m hpa_tf.segmentation output)")
    parser.add_argument("--out", required=True, help="submission CSV to write")
    args = parser.parse_args(argv)
    truth = Truth.load(fs.join(args.data, "truth"), args.split)
    order = None
    sample = fs.join(args.data, "sample_submission.csv")
    if args.split == "test" and fs.exists(sample):
        order = list(pd.read_csv(_io.StringIO(fs.read_text(sample)), dtype={"ID": str})["ID"])
    preds = oracle_predictions(truth, args.kind, fs.join(args.data, args.split), order, args.masks)
    write_submission(args.out, preds)
    n_cells = sum(len(p.masks) for p in preds)
    on = f"predicted masks in {args.masks}" if args.masks else "true masks"
    print(f"wrote {args.out}: {len(preds)} images, {n_cells} cells ({args.kind}, {on})")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
