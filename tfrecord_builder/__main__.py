"""Build TFRecords once, reuse them everywhere.

    python -m tfrecord_builder build --data DIR --labels train.csv --out OUT
        [--source NAME DIR LABELS ...] [--segmenter classical|hpacellseg|precomputed:DIR] [--image-size 512] [--cell-size 128]
        [--shard-mb 150] [--workers N] [--folds 5] [--compression none|gzip]
        [--runner local|beam --beam-options="--runner=DataflowRunner ..."] [--overwrite]
    python -m tfrecord_builder inspect OUT [--png sheet.png]

OUT gets ``images-00000-of-000NN.tfrec`` and ``cells-...`` shards, ``manifest.json`` (counts, class
frequencies, per-shard example counts and sha256, schema version, the build config), ``folds.csv``
and ``errors.csv``. A rerun skips complete shards; ``--overwrite`` starts over. Several data sources
(``--source competition data/train data/train.csv --source external ext/train ext/train.csv``) go
into one record set: folds stratified over all of them, each record stores its source, so training
can keep external images out of validation (``data.val_sources``).
"""

from __future__ import annotations

import argparse
import json
import sys

from hpa_tf import fs
from hpa_tf.io import read_label_table
from tfrecord_builder.build import BuildConfig, ImageJob, build_example
from tfrecord_builder.folds import assign_folds
from tfrecord_builder.shards import MANIFEST, PLAN, plan_shards, read_meta, shard_done, write_manifest, write_shard

_PROBE = 3  # images built up front to size the shards


def _load_or_make_plan(config: BuildConfig, out: str, jobs: list[ImageJob], overwrite: bool) -> list[list[ImageJob]]:
    path = fs.join(out, PLAN)
    if fs.exists(path) and not overwrite:
        saved = json.loads(fs.read_text(path))
        if saved["config"] != config.to_dict():
            raise SystemExit(
                f"error: {out} holds a build with another config ({saved['config']}); "
                "use another --out, or --overwrite to start over"
            )
        by_id = {j.image_id: j for j in jobs}
        planned = {i for shard in saved["shards"] for i in shard}
        if planned != set(by_id):
            raise SystemExit(f"error: the label table lists other images than the build in {out}; "
                             "use another --out, or --overwrite to start over")
        return [[by_id[i] for i in shard] for shard in saved["shards"]]
    # Size the shards from a few real records: image and cell shards hold the same images, and
    # the larger of the two sets the count.
    sizes = [build_example(config, j) for j in jobs[:_PROBE]]
    record = max((max(len(b.image_record), len(b.cell_record)) for b in sizes if b.ok), default=1_000_000)
    per_shard = max(1, int(config.shard_mb * 1e6 // max(record, 1)))
    plan = plan_shards(jobs, per_shard, config.seed)
    fs.write_text(path, json.dumps({"config": config.to_dict(), "shards": [[j.image_id for j in s] for s in plan]}))
    return plan


def _sources(args: argparse.Namespace) -> tuple[tuple[str, str, str], ...]:
    """(name, image folder, label table) of every source the command line names."""
    sources = [tuple(s) for s in args.source or []]
    if args.data or args.labels:
        if not (args.data and args.labels):
            raise SystemExit("error: --data and --labels go together (or give --source NAME DATA LABELS)")
        sources.insert(0, (args.source_name, args.data, args.labels))
    if not sources:
        raise SystemExit("error: give --data DIR --labels CSV, or one --source NAME DATA LABELS per data source")
    names = [s[0] for s in sources]
    if len(set(names)) < len(names):
        raise SystemExit(f"error: source names must differ, got {names}")
    return tuple(sources)


def _jobs(config: BuildConfig, classes: str, n_folds: int, seed: int) -> tuple[list[ImageJob], dict[str, int]]:
    """One job per image of every source; folds stratified over all of them together."""
    ids, labels, owners = [], [], []
    seen: dict[str, str] = {}
    for name, _, labels_path in config.sources:
        table = read_label_table(labels_path, classes)
        if table.attrs.get("label_report"):
            print(table.attrs["label_report"])
        for image_id, lab in zip(table["ID"], table["labels"]):
            if image_id in seen:
                raise SystemExit(f"error: image {image_id} is listed by source {seen[image_id]!r} and by {name!r} "
                                 f"({labels_path}); an ID must be unique across sources")
            seen[image_id] = name
            ids.append(image_id)
            labels.append(lab)
            owners.append(name)
    folds = assign_folds(ids, labels, n_folds, seed)
    return [ImageJob(i, tuple(lab), folds[i], src) for i, lab, src in zip(ids, labels, owners)], folds


def build(args: argparse.Namespace) -> int:
    compression = {"none": "", "gzip": "GZIP"}[args.compression]
    config = BuildConfig(_sources(args), args.segmenter, args.image_size, args.cell_size, args.shard_mb,
                         compression, args.folds, args.seed)
    jobs, folds = _jobs(config, args.classes, args.folds, args.seed)
    if args.overwrite and fs.exists(args.out):
        for name in fs.listdir(args.out):
            if name.endswith(".tfrec") or ".tfrec.tmp-" in name or name in (PLAN, MANIFEST):
                fs.remove(fs.join(args.out, name))
        if fs.exists(fs.join(args.out, "_meta")):
            for name in fs.listdir(fs.join(args.out, "_meta")):
                fs.remove(fs.join(args.out, "_meta", name))
    fs.makedirs(args.out)
    plan = _load_or_make_plan(config, args.out, jobs, args.overwrite)
    todo = [s for s in range(len(plan)) if not shard_done(args.out, s, len(plan))]
    print(f"{len(jobs)} images in {len(plan)} shards; {len(plan) - len(todo)} already complete")
    for s in todo:  # a shard whose images are all gone still gets written (no runner sees it)
        if not plan[s]:
            write_shard(args.out, s, len(plan), [], config.compression)
    todo = [s for s in todo if plan[s]]
    if args.runner == "beam":
        from tfrecord_builder.runners import run_beam

        run_beam(config, args.out, plan, todo, args.beam_options)
    else:
        from tfrecord_builder.runners import run_local

        run_local(config, args.out, plan, todo, args.workers)
    metas = [read_meta(args.out, s) for s in range(len(plan))]
    manifest = write_manifest(args.out, config.to_dict(), metas, folds)
    c = manifest["counts"]
    print(f"wrote {c['images']} images, {c['cells']} cells in {c['shards']} x 2 shards to {args.out}; "
          f"{c['errors']} errors" + (f" (see {fs.join(args.out, 'errors.csv')})" if c["errors"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfrecord_builder", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build image and cell shards")
    b.add_argument("--data", help="folder of {ID}_{red,green,blue,yellow} images")
    b.add_argument("--labels", help="label table: train.csv (2021 or 2018 form) or kaggle_2021.tsv")
    b.add_argument("--source-name", default="main", help="the name --data/--labels are stored under (default main)")
    b.add_argument("--source", nargs=3, action="append", metavar=("NAME", "DATA", "LABELS"),
                   help="one more data source: its name, image folder and label table (repeatable)")
    b.add_argument("--out", required=True, help="output folder (local, gs://, ...)")
    b.add_argument("--classes", choices=("auto", "2021", "2018"), default="auto",
                   help="class ids of the label table: auto = 2018 for an Id,Target table, else 2021")
    b.add_argument("--segmenter", default="classical", help="classical | hpacellseg | precomputed:DIR")
    b.add_argument("--image-size", type=int, default=512)
    b.add_argument("--cell-size", type=int, default=128)
    b.add_argument("--shard-mb", type=float, default=150.0)
    b.add_argument("--workers", type=int, default=1)
    b.add_argument("--folds", type=int, default=5)
    b.add_argument("--seed", type=int, default=0, help="seeds the shard shuffle and the folds")
    b.add_argument("--compression", choices=("none", "gzip"), default="none")
    b.add_argument("--runner", choices=("local", "beam"), default="local")
    b.add_argument("--beam-options", default="", help='Beam pipeline options, written with "=": --beam-options="--runner=DataflowRunner --project=P ..."')
    b.add_argument("--overwrite", action="store_true", help="delete what a previous build left and start over")
    i = sub.add_parser("inspect", help="print the manifest summary and write a contact sheet PNG")
    i.add_argument("out")
    i.add_argument("--png", help="where to write the contact sheet (default OUT/contact_sheet.png)")
    i.add_argument("--n", type=int, default=6, help="images on the sheet")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build(args)
    from tfrecord_builder.inspect import inspect

    return inspect(args.out, args.png, args.n)


if __name__ == "__main__":
    sys.exit(main())
