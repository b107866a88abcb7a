"""Write a SynthHPA dataset in HPA format with cell-level truth.

    python -m hpa_tf.synthetic --out synth --n-train 200 --n-test 60 --size 1024 --seed 0 --workers 2
    python -m hpa_tf.synthetic --out hard --label-mix kaggle2021 --texture-scale 0.5   # nearer real data
    python -m hpa_tf.synthetic --out steady --varying-share 0.5   # half the labels on every cell

Layout of ``--out``::

    train/{ID}_{red,green,blue,yellow}.png   8-bit channels, like the competition's
    test/{ID}_{...}.png
    train.csv                                ID,Label (2021 form, labels joined by |)
    sample_submission.csv                    ID,ImageWidth,ImageHeight,PredictionString (test)
    truth/{ID}_cells.png, truth/{ID}_nuclei.png   uint16 instance masks (0 = background)
    truth/cells.csv                          ID,split,cell_id,Label
    truth/images.csv                         ID,split,ImageWidth,ImageHeight,Label
    synthhpa.json                            the generator's parameters
    preview.png                              composites of a few images with their truth

A rerun with the same parameters skips images whose files are complete (only their masks and
labels are recomputed, which is cheap), so a killed run loses nothing finished.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from collections.abc import Iterator

import pandas as pd
from tqdm import tqdm

from hpa_tf import fs
from hpa_tf.cli import run
from hpa_tf.synthetic.generator import LABEL_MIXES, SPLITS, image_id, pick_size
from hpa_tf.synthetic.preview import write_preview
from hpa_tf.synthetic.writer import make_one
from hpa_tf.truth import CELLS_CSV, IMAGES_CSV
from hpa_tf.workers import die_with_parent

PARAMS_FILE = "synthhpa.json"
# The options that shape a dataset beyond seed and size: their flags and defaults (which older runs,
# whose synthhpa.json lacks them, were made with).
OPTION_FLAGS = {"label_mix": "--label-mix", "texture_scale": "--texture-scale", "varying_share": "--varying-share"}
OPTION_DEFAULTS = {"label_mix": "flattened", "texture_scale": 1.0, "varying_share": 1.0}


def read_params(out: str) -> dict | None:
    """The parameters a SynthHPA folder was made with (``synthhpa.json``, with the defaults of options
    older runs did not record), or None where ``out`` holds no SynthHPA run."""
    path = fs.join(out, PARAMS_FILE)
    return {**OPTION_DEFAULTS, **json.loads(fs.read_text(path))} if fs.exists(path) else None


def _jobs(args: argparse.Namespace, sizes: list[int]) -> list[tuple[str, int, int, str, int, str, float, float]]:
    jobs = []
    for split, n in zip(SPLITS, (args.n_train, args.n_test)):
        for i in range(n):
            jobs.append((args.out, args.seed, i, split, pick_size(args.seed, split, i, sizes), args.label_mix,
                         args.texture_scale, args.varying_share))
    return jobs


def _remove_images(out: str, keep: set[str]) -> None:
    """Delete the images and truth masks in ``out`` whose ID is not in ``keep`` (all with an empty
    set): what an earlier, larger or different run left would otherwise pass for this run's."""
    for folder in (*SPLITS, "truth"):
        path = fs.join(out, folder)
        if not fs.isdir(path):
            continue
        for name in fs.listdir(path):
            stem = name.rsplit("_", 1)[0]
            if name.endswith(".png") and stem not in keep:
                fs.remove(fs.join(path, name))


def _run(jobs: list, workers: int) -> Iterator[dict]:
    if workers <= 1:
        yield from map(make_one, jobs)
        return
    # spawn, not fork: a forked TensorFlow runtime (used for file access) can deadlock.
    with mp.get_context("spawn").Pool(workers, initializer=die_with_parent) as pool:
        yield from pool.imap(make_one, jobs, chunksize=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpa_tf.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (local, gs://, ...)")
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--size", default="1024", help="image size in px, or a comma list to mix sizes (e.g. 1728,2048)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--label-mix", choices=LABEL_MIXES, default="flattened",
                        help="image label sets: 1-3 classes, rare ones made more common (flattened, the original), or "
                        "the real Kaggle 2021 train.csv's sets as often as there (kaggle2021)")
    parser.add_argument("--texture-scale", type=float, default=1.0,
                        help="size of the patterns' strokes and dots against the cells, 0.1 to 4 (1: the original; "
                        "0.5: half, finer, as on a real 2048 px field)")
    parser.add_argument("--varying-share", type=float, default=1.0,
                        help="share of image labels that vary from cell to cell, 0 to 1 (1: the original, all vary; the "
                        "others are shown by every cell that can show them, as most proteins are on real fields; the "
                        "Mitotic spindle always varies)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over when the folder holds a run with other parameters (its images are deleted)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in str(args.size).split(",") if s.strip()]
    except ValueError:
        parser.error(f"--size {args.size!r}: give pixels, e.g. 1024 or 1728,2048")
    if not sizes or min(sizes) < 64:
        parser.error("--size must be at least 64 px")
    if not 0.1 <= args.texture_scale <= 4.0:
        parser.error(f"--texture-scale {args.texture_scale}: give a factor from 0.1 to 4")
    if not 0.0 <= args.varying_share <= 1.0:
        parser.error(f"--varying-share {args.varying_share}: give a share from 0 to 1")
    args.varying_share += 0.0  # -0 is 0
    if args.n_train < 0 or args.n_test < 0:
        parser.error("--n-train and --n-test must be >= 0")

    params = {"format": "synthhpa-1", "seed": args.seed, "n_train": args.n_train, "n_test": args.n_test, "sizes": sizes,
              "label_mix": args.label_mix, "texture_scale": args.texture_scale,
              "varying_share": args.varying_share}
    params_path = fs.join(args.out, PARAMS_FILE)
    same = ("format", "seed", "sizes", "label_mix", "texture_scale", "varying_share")  # what an image's pixels depend on
    old = read_params(args.out)
    ours = old is not None  # a SynthHPA folder: only then are images that are not this run's removed
    changed: list[str] = []
    if old is not None:
        changed = [f"{k} {old.get(k)} (now {params[k]})" for k in same if old.get(k) != params[k]]
        if changed and not args.overwrite:
            print(f"error: {args.out} holds a SynthHPA run made with other parameters: {', '.join(changed)}; use another "
                  "--out, or --overwrite to start over there", file=sys.stderr)
            return 2
    fs.makedirs(args.out)
    fs.write_text(params_path, json.dumps(params, indent=2))

    jobs = _jobs(args, sizes)
    if ours:  # other parameters: start over; a smaller rerun: drop the images beyond it
        _remove_images(args.out, keep=set() if changed else {image_id(seed, split, i) for _, seed, i, split, *_ in jobs})
    rows = list(tqdm(_run(jobs, args.workers), total=len(jobs), desc="SynthHPA", unit="img"))
    images = pd.DataFrame([{k: r[k] for k in ("ID", "split", "ImageWidth", "ImageHeight", "Label")} for r in rows])
    cells = pd.DataFrame(
        [{"ID": r["ID"], "split": r["split"], "cell_id": k, "Label": lab} for r in rows for k, lab in enumerate(r["cells"], 1)],
        columns=["ID", "split", "cell_id", "Label"],
    )
    truth = fs.join(args.out, "truth")
    fs.write_text(fs.join(truth, IMAGES_CSV), images.to_csv(index=False))
    fs.write_text(fs.join(truth, CELLS_CSV), cells.to_csv(index=False))
    train = images[images["split"] == "train"]
    test = images[images["split"] == "test"]
    fs.write_text(fs.join(args.out, "train.csv"), train[["ID", "Label"]].to_csv(index=False))
    sample = test[["ID", "ImageWidth", "ImageHeight"]].assign(PredictionString="")
    fs.write_text(fs.join(args.out, "sample_submission.csv"), sample.to_csv(index=False))
    write_preview(args.out, images, cells)
    skipped = sum(r["skipped"] for r in rows)
    print(f"SynthHPA: {len(train)} train + {len(test)} test images, {len(cells)} cells "
          f"({skipped} already complete) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
