"""Segment every image of a folder and write masks plus a PNG overlay per image.

    python -m hpa_tf.segmentation --data DIR --out MASKS --backend classical --workers 2
    python -m hpa_tf.segmentation --data synth/test --out masks --truth synth/truth   # also score it

Writes ``{ID}_cellmask.png``, ``{ID}_nucleimask.png`` (uint16, 0 = background), ``{ID}_overlay.png``
and ``errors.csv`` (ID, error) for images that could not be read or segmented. A rerun skips
finished images and retries the failed ones. The masks are what ``--segmenter precomputed:MASKS``
reads later.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from tqdm import tqdm

from hpa_tf import fs
from hpa_tf.cli import at_least, require_writable, run
from hpa_tf.config import parse_value
from hpa_tf.io import read_label_table, scan_image_ids
from hpa_tf.io.png import read_label_png
from hpa_tf.lock import FolderLock
from hpa_tf.segmentation import BACKENDS, check_segmenter, read_masks
from hpa_tf.segmentation.quality import MatchQuality, match_quality
from hpa_tf.segmentation.runner import is_done, segment_folder
from hpa_tf.truth import mask_path, nuclei_path, read_cell_mask


def _at(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A label image at the truth's size (nearest neighbour): downsized test images score against
    full-size truth, as their submission rows are written at the full size.

    >>> _at(np.array([[1, 2], [3, 4]]), (4, 4))[:, 0].tolist()
    [1, 1, 3, 3]
    """
    if labels.shape == tuple(shape):
        return labels
    rows = np.minimum((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0], labels.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1], labels.shape[1] - 1).astype(int)
    return labels[rows][:, cols]


def _score(truth_dir: str, out: str, ids: list[str]) -> dict:
    cells, nuclei = MatchQuality(0, 0, 0), MatchQuality(0, 0, 0)
    for image_id in tqdm(ids, desc="scoring", unit="img"):
        if not fs.exists(mask_path(truth_dir, image_id)) or not is_done(out, image_id):
            continue
        seg = read_masks(out, image_id)
        true_cells = read_cell_mask(truth_dir, image_id)
        cells = cells + match_quality(true_cells, _at(seg.cells, true_cells.shape))
        nuc_path = nuclei_path(truth_dir, image_id)
        if fs.exists(nuc_path):
            nuclei = nuclei + match_quality(read_label_png(nuc_path), _at(seg.nuclei, true_cells.shape))
    return {
        "cells": {"n_true": cells.n_true, "n_pred": cells.n_pred, "recall": cells.recall, "precision": cells.precision},
        "nuclei": {"n_true": nuclei.n_true, "n_pred": nuclei.n_pred, "recall": nuclei.recall, "precision": nuclei.precision},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpa_tf.segmentation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder of {ID}_{red,green,blue,yellow} images")
    parser.add_argument("--out", required=True, help="folder for masks, overlays and errors.csv")
    parser.add_argument("--backend", default="classical", help=f"one of {', '.join(BACKENDS)} (default classical)")
    parser.add_argument("--labels", help="a label table (train.csv...) listing the IDs; default: every complete image in --data")
    parser.add_argument("--workers", type=at_least(1), default=1)
    parser.add_argument("--batch", type=at_least(0), default=0, help="images per segmenter call (default 1; 8 for hpacellseg)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the PNG overlays")
    parser.add_argument("--truth", help="a SynthHPA truth folder: report the share of cells matched at IoU >= 0.6")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backend option, e.g. internal_size=768 or nuclei_model=/models/nuc.pth (repeatable)")
    args = parser.parse_args(argv)

    options = []
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--option {item!r}: expected KEY=VALUE")
        options.append((key, parse_value(value)))
    if not fs.exists(args.data):
        raise FileNotFoundError(f"--data {args.data}: no such folder")
    check_segmenter(args.backend, **dict(options))
    if args.labels:
        table = read_label_table(args.labels)
        if table.attrs.get("label_report"):
            print(table.attrs["label_report"])
        ids = list(table["ID"])
    else:
        ids = scan_image_ids(args.data)
    partial = [] if args.labels else sorted(set(scan_image_ids(args.data, complete=False)) - set(ids))
    if partial:
        shown = ", ".join(partial[:5]) + (", ..." if len(partial) > 5 else "")
        print(f"warning: {len(partial)} image(s) of {args.data} lack a channel file and are not segmented: {shown}")
    if not ids:
        print(f"error: no images in {args.data} (expected {{ID}}_red/_green/_blue/_yellow files)", file=sys.stderr)
        return 2
    require_writable(args.out, "--out")
    with FolderLock(args.out, "python -m hpa_tf.segmentation"):
        return _segment_all(args, ids, options)


def _segment_all(args: argparse.Namespace, ids: list[str], options: list) -> int:
    rows = segment_folder(args.backend, tuple(options), args.data, args.out, ids, args.workers, args.batch,
                          not args.no_overlays)
    failed = [r for r in rows if not r["ok"]]
    done = [r for r in rows if r["ok"]]
    print(f"segmented {len(done)} images ({len(ids) - len(rows)} already done), {len(failed)} failed"
          + (f" -> {fs.join(args.out, 'errors.csv')}" if failed else ""))
    if done:
        means = {k: sum(r[k] for r in done) / len(done) for k in ("read_s", "segment_s", "write_s")}
        cells = sum(r["n_cells"] for r in done) / len(done)
        print(f"per image: read {means['read_s']:.3f} s, segment {means['segment_s']:.3f} s, "
              f"write {means['write_s']:.3f} s; {cells:.1f} cells")
    if args.truth:
        quality = _score(args.truth, args.out, ids)
        fs.write_text(fs.join(args.out, "quality.json"), json.dumps(quality, indent=2))
        c, n = quality["cells"], quality["nuclei"]
        print(f"cells matched at IoU>=0.6: recall {c['recall']:.4f}, precision {c['precision']:.4f} "
              f"({c['n_true']} true, {c['n_pred']} predicted); nuclei: recall {n['recall']:.4f}, "
              f"precision {n['precision']:.4f}")
    return 1 if len(failed) == len(ids) else 0  # failures are listed; only a folder with no mask at all fails


if __name__ == "__main__":
    sys.exit(run(main))
