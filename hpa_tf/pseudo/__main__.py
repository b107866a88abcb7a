"""``python -m hpa_tf.pseudo``: per-cell soft labels for every training cell, out of fold.

    python -m hpa_tf.pseudo --records RECORDS --models DIR [DIR ...] --out RECORDS/pseudo/round1 \\
        [--source combined|cells|cam|cell] [--no-normalise] [--truth synth/truth]

Each DIR is a train_tpu.py output folder (its best.keras is used, its config.yaml says which folds it
held out) or a .keras file beside its config.yaml. The models of each out-of-fold split label only the
cells of the images that split held out. With --truth (SynthHPA's truth folder), the labels of every
source are scored against the true cells, next to the naive label: OUT/quality.md.
"""

from __future__ import annotations

import sys

from hpa_tf import fs
from hpa_tf.cli import at_least, doc_parser, run


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m hpa_tf.pseudo", __doc__)
    parser.add_argument("--records", required=True, help="the builder's output folder")
    parser.add_argument("--models", nargs="+", required=True, help="training folders (or .keras files) of the splits")
    parser.add_argument("--out", required=True, help="folder for labels.npz and meta.json (e.g. RECORDS/pseudo/round1)")
    parser.add_argument("--source", default="combined", choices=("combined", "cells", "cam", "cell"),
                        help="which labels training reads (all are stored)")
    parser.add_argument("--no-normalise", action="store_true", help="do not scale each class by its best cell in the image")
    parser.add_argument("--truth", help="a truth folder (SynthHPA): score the labels against the true cells")
    parser.add_argument("--batch", type=at_least(1), default=16, help="model batch size")
    args = parser.parse_args(argv)

    from hpa_tf.lock import FolderLock
    from hpa_tf.pseudo.oof import SOURCES, label
    from hpa_tf.pseudo.quality import quality_markdown

    with FolderLock(args.out, "python -m hpa_tf.pseudo"):
        labels = label(args.records, args.models, args.out, args.source, not args.no_normalise, args.truth, args.batch)
    meta = labels.meta
    print(f"labelled {meta['cells']} cells of {meta['images']} images ({', '.join(meta['sources'])}; training reads "
          f"{args.source}) -> {args.out}")
    if "quality" in meta:
        names = {"naive": "naive: every cell gets its image's labels",
                 **{k: SOURCES[k] for k in meta["sources"]}, "combined": "combined: the mean of the sources"}
        text = quality_markdown(meta["quality"], names)
        fs.write_text(fs.join(args.out, "quality.md"), text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
