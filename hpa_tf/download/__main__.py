"""``python -m hpa_tf.download``: see :mod:`hpa_tf.download`."""

from __future__ import annotations

import sys

import argparse

from hpa_tf.cli import at_least, doc_parser, run
from hpa_tf.download import MIN_SIDE, TEMPLATES, DownloadConfig, download
from hpa_tf.download.fetch import RetryPolicy
from hpa_tf.labels import parse_labels


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _size(text: str) -> int:
    value = at_least(0)(text)
    if 0 < value < MIN_SIDE:
        raise argparse.ArgumentTypeError(f"{value}: give 0 (keep the served size) or at least {MIN_SIDE} px")
    return value


def main(argv: list[str] | None = None) -> int:
    import hpa_tf.download as module

    parser = doc_parser("python -m hpa_tf.download", module.__doc__)
    parser.add_argument("--list", required=True, dest="table", help="kaggle_2021.tsv (Image, Label_idx, Cellline, in_trainset)")
    parser.add_argument("--out", required=True, help="output folder: OUT/train/ and OUT/train.csv")
    parser.add_argument("--labels", default="", help="keep images with any of these 2021 classes, e.g. 11,15")
    parser.add_argument("--cell-lines", default="", help='keep these cell lines, e.g. "U-2 OS,A-431"')
    parser.add_argument("--include-in-trainset", action="store_true", help="keep rows whose in_trainset is true")
    parser.add_argument("--dedup-against", metavar="DIR", help="the competition's train/ folder: skip images it holds")
    parser.add_argument("--source", choices=sorted(TEMPLATES), default="jpg", help="8-bit JPEG or 16-bit .tif.gz files")
    parser.add_argument("--url-template", help="URL of one channel file, with {image} (the Image column) and {color}")
    parser.add_argument("--size", type=_size, default=0, help="resize the longer side to this (0 = keep)")
    parser.add_argument("--keep-tif", action="store_true", help="with --source tif: keep the 16-bit TIFF files")
    parser.add_argument("--workers", type=at_least(1), default=16, help="images fetched in parallel")
    parser.add_argument("--limit", type=at_least(0), default=0, help="at most this many images (0 = all)")
    parser.add_argument("--retries", type=at_least(1), default=5, help="tries per file")
    parser.add_argument("--timeout", type=at_least(0.001, float), default=60.0, help="seconds a socket may wait")
    parser.add_argument("--backoff", type=at_least(0.0, float), default=1.0, help="first wait between tries in seconds (doubles)")
    args = parser.parse_args(argv)
    cfg = DownloadConfig(
        table=args.table, out=args.out, labels=parse_labels(args.labels) if args.labels else (),
        cell_lines=_names(args.cell_lines), include_in_trainset=args.include_in_trainset,
        dedup_against=args.dedup_against, source=args.source, url_template=args.url_template, size=args.size,
        keep_tif=args.keep_tif, workers=args.workers, limit=args.limit,
        policy=RetryPolicy(args.retries, args.timeout, args.backoff),
    )
    counts = download(cfg)
    return 1 if counts["error"] else 0  # a partial download is not a success: a rerun retries the failures


if __name__ == "__main__":
    sys.exit(run(main))
