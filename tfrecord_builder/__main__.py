"""Build TFRecords once, reuse them everywhere.

    python -m tfrecord_builder build --data DIR --labels train.csv --out OUT
        [--source NAME DIR LABELS ...] [--segmenter classical|hpacellseg|precomputed:DIR] [--image-size 512] [--cell-size 128]
        [--shard-mb 150] [--workers N] [--folds 5] [--group-by antibody|well|none] [--compression none|gzip]
        [--runner local|beam --beam-options="--runner=DataflowRunner ..."] [--overwrite]
    python -m tfrecord_builder inspect OUT [--png sheet.png]

OUT gets ``images-00000-of-000NN.tfrec`` and ``cells-...`` shards, ``manifest.json`` (counts, class
frequencies, per-shard example counts and sha256, schema version, the build config), ``folds.csv``
``errors.csv``, and ``provenance.json`` (written last: what the record set was made from, see
:mod:`hpa_tf.provenance`). A record set is immutable once finished: a rerun with the same inputs
skips complete shards (a killed build loses only the shards it was writing); a folder holding records
made from other inputs (another label, image, setting or fold count) is refused in one line, unless
``--overwrite`` (start over whatever it holds) or ``--replace-changed`` (start over only when the
inputs changed: what ``python -m hpa_tf.job`` uses). Several data sources
(``--source competition data/train data/train.csv --source external ext/train ext/train.csv``) go
into one record set: folds stratified over all of them, each record stores its source, so training
can keep external images out of validation (``data.val_sources``). The fields of one antibody share a
fold when their IDs say which (HPA's ``{antibody}_{plate}_{well}_{field}``; ``--group-by well``: of
one well; :mod:`tfrecord_builder.folds`), so no model validates on, or labels, near-copies of its
training images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from hpa_tf import fs, provenance
from hpa_tf.data.manifest import Manifest
from hpa_tf.cli import at_least, require_writable, run
from hpa_tf.io import has_any_channel, read_label_table
from hpa_tf.lock import FolderLock
from hpa_tf.segmentation import check_segmenter, runs_on_accelerator
from hpa_tf.segmentation.runner import segment_folder
from tfrecord_builder.build import BuildConfig, ImageJob, build_example
from tfrecord_builder.folds import GROUPINGS, group_of
from tfrecord_builder.identity import records_made_from
from tfrecord_builder.shards import (
    FOLDS,
    MANIFEST,
    PLAN,
    plan_shards,
    read_meta,
    shard_done,
    write_manifest,
    write_shard,
)

_PROBE = 3  # images built up front to size the shards


class BuildError(ValueError):
    """A build that cannot start or finish as asked; the message says what to change."""


def _done_shards(out: str) -> int:
    meta = fs.join(out, "_meta")
    return len([n for n in fs.listdir(meta) if n.endswith(".json")]) if fs.exists(meta) else 0


def _segment_first(config: BuildConfig, out: str, jobs: list[ImageJob]) -> BuildConfig:
    """The config the image jobs run with. A segmenter with models (``hpacellseg``) segments every
    image first, in this process alone and in batches, into ``OUT/_masks``; the jobs then read those
    masks (the manifest still names the segmenter that made them)."""
    if not runs_on_accelerator(config.segmenter):
        return config
    masks = fs.join(out, "_masks")
    for name, data, _ in config.sources:
        segment_folder(config.segmenter, (), data, masks, [j.image_id for j in jobs if j.source == name], overlays=False)
    return dataclasses.replace(config, segmenter=f"precomputed:{masks}")


def _held(out: str) -> dict | None:
    """The ``made_from`` of the record set (finished or not) in ``out``; {} for one of an older
    hpa-tf (no fingerprint); None for a folder without a build."""
    record = provenance.read(out)
    if record is not None:
        return record.made_from
    plan = fs.join(out, PLAN)
    if fs.exists(plan):
        return json.loads(fs.read_text(plan)).get("made_from", {})
    return {} if fs.exists(fs.join(out, MANIFEST)) else None


def _check_inputs(out: str, made_from: dict, overwrite: bool, replace_changed: bool) -> None:
    """Clear ``out`` when asked, or refuse a folder that holds records made from other inputs."""
    held = _held(out)
    if overwrite or held is None or held == made_from:
        if overwrite:
            _clear(out)
        return
    if provenance.read(out) is None and not _done_shards(out):
        print(f"{out}: an earlier build from other inputs wrote no shard; starting over")
        _clear(out)
        return
    what = ", ".join(provenance.changed(held, made_from)) or "made by an older hpa-tf"
    if replace_changed:
        print(f"{out}: the records there were made from other inputs ({what}); building them anew")
        _clear(out)
        return
    raise BuildError(f"{out} holds records made from other inputs ({what} changed); records are never changed in "
                     "place: use another --out, or --overwrite to build them anew there")


def _load_or_make_plan(config: BuildConfig, out: str, jobs: list[ImageJob], made_from: dict,
                       work: BuildConfig) -> list[list[ImageJob]]:
    path = fs.join(out, PLAN)
    if fs.exists(path):
        saved = json.loads(fs.read_text(path))
        by_id = {j.image_id: j for j in jobs}
        return [[by_id[i] for i in shard] for shard in saved["shards"]]  # same inputs: _check_inputs ran
    # Size the shards from a few real records: image and cell shards hold the same images, and
    # the larger of the two sets the count.
    sizes = [build_example(work, j) for j in jobs[:_PROBE]]
    record = max((max(len(b.image_record), len(b.cell_record)) for b in sizes if b.ok), default=1_000_000)
    per_shard = max(1, int(config.shard_mb * 1e6 // max(record, 1)))
    plan = plan_shards(jobs, per_shard, config.seed)
    fs.write_text(path, json.dumps({"config": config.to_dict(), "made_from": made_from,
                                    "shards": [[j.image_id for j in s] for s in plan]}))
    return plan


def _sources(args: argparse.Namespace) -> tuple[tuple[str, str, str], ...]:
    """(name, image folder, label table) of every source the command line names."""
    sources = [tuple(s) for s in args.source or []]
    if args.data or args.labels:
        if not (args.data and args.labels):
            raise BuildError("--data and --labels go together (or give --source NAME DATA LABELS)")
        sources.insert(0, (args.source_name, args.data, args.labels))
    if not sources:
        raise BuildError("give --data DIR --labels CSV, or one --source NAME DATA LABELS per data source")
    names = [s[0] for s in sources]
    if len(set(names)) < len(names):
        raise BuildError(f"source names must differ, got {names}")
    return tuple(sources)


_PROBE_IDS = 20


def _jobs(config: BuildConfig, classes: str) -> list[ImageJob]:
    """One job per image of every source; each source checked before anything is written: its
    folder and table exist, and images of the table are in the folder."""
    jobs: list[ImageJob] = []
    seen: dict[str, str] = {}
    for name, data, labels_path in config.sources:
        if not fs.exists(labels_path):
            raise BuildError(f"--labels {labels_path}: no such file (the label table, e.g. train.csv)")
        if not fs.exists(data) or not fs.listdir(data):
            raise BuildError(f"--data {data}: no such folder, or it is empty (the folder of the images in {labels_path})")
        table = read_label_table(labels_path, classes)
        if table.attrs.get("label_report"):
            print(table.attrs["label_report"])
        probe = list(table["ID"][:_PROBE_IDS])
        if probe and not any(has_any_channel(data, i) for i in probe):
            raise BuildError(f"none of the first {len(probe)} images of {labels_path} has a file in {data} (looked for "
                             f"{probe[0]}_red.png and other formats): is --data the image folder of that table?")
        _warn_dim_16bit(data, [i for i in probe if has_any_channel(data, i)][:1], config.bit_depth)
        for image_id, lab in zip(table["ID"], table["labels"]):
            if image_id in seen:
                raise BuildError(f"image {image_id} is listed by source {seen[image_id]!r} and by {name!r} "
                                 f"({labels_path}); an ID must be unique across sources")
            seen[image_id] = name
            jobs.append(ImageJob(image_id, tuple(lab), name))
    if not jobs:
        raise BuildError(f"the label tables {[s[2] for s in config.sources]} list no images")
    return jobs


def _warn_dim_16bit(data: str, ids: list[str], bit_depth: int) -> None:
    """Say so when 16-bit files use so little of their range that 8-bit records would be near black."""
    from hpa_tf.io import read_image

    if bit_depth != 8 or not ids:
        return
    try:
        image = read_image(data, ids[0], dtype="native")
    except (OSError, ValueError):
        return  # the build reports unreadable images itself
    if image.dtype == np.uint16 and int(image.max()) < 4096:
        print(f"warning: the 16-bit files of {data} use 0..{int(image.max())} of 0..65535 (e.g. {ids[0]}): 8-bit records "
              f"keep about {int(image.max()) // 257 + 1} grey levels of them; build with --bit-depth 16 (the job: "
              "--bit-depth 16) to keep their precision")


def build(args: argparse.Namespace) -> int:
    compression = {"none": "", "gzip": "GZIP"}[args.compression]
    config = BuildConfig(_sources(args), args.segmenter, args.image_size, args.cell_size, args.shard_mb,
                         compression, args.seed, args.bit_depth)
    check_segmenter(args.segmenter)
    jobs = _jobs(config, args.classes)
    if len(jobs) < args.folds:
        raise BuildError(f"{len(jobs)} images cannot make {args.folds} folds; use --folds {len(jobs)} or fewer")
    n_groups = len({group_of(j.image_id, args.group_by) for j in jobs})
    if args.folds > 1 and n_groups < args.folds:
        raise BuildError(f"{len(jobs)} images in {n_groups} groups (--group-by {args.group_by}, from their IDs) cannot "
                         f"make {args.folds} folds that keep each group together; use --folds {n_groups} or fewer, or "
                         "--group-by none")
    require_writable(args.out, "--out")
    made_from = records_made_from(config, jobs, args.folds, group_by=args.group_by)
    with FolderLock(args.out, "tfrecord_builder build"):
        _check_inputs(args.out, made_from, args.overwrite, args.replace_changed)
        if provenance.read(args.out) is not None and all(
                shard_done(args.out, s, len(m), verify=args.verify) for m in [_planned(args.out)] for s in range(len(m))):
            print(f"{args.out}: the records of these inputs are complete ({Manifest.read(args.out).n_images} images); "
                  "nothing to do")
            return 0
        provenance.forget(args.out)
        work = _segment_first(config, args.out, jobs)
        plan = _load_or_make_plan(config, args.out, jobs, made_from, work)
        todo = [s for s in range(len(plan)) if not shard_done(args.out, s, len(plan), verify=args.verify)]
        print(f"{len(jobs)} images in {len(plan)} shards; {len(plan) - len(todo)} already complete")
        for s in todo:  # a shard whose images are all gone still gets written (no runner sees it)
            if not plan[s]:
                write_shard(args.out, s, len(plan), [], config.compression)
        todo = [s for s in todo if plan[s]]
        if args.runner == "beam":
            from tfrecord_builder.runners import run_beam

            run_beam(work, args.out, plan, todo, args.beam_options)
        else:
            from tfrecord_builder.runners import run_local

            run_local(work, args.out, plan, todo, args.workers)
        metas = [read_meta(args.out, s) for s in range(len(plan))]
        labels = {j.image_id: j.labels for j in jobs}
        manifest = write_manifest(args.out, config.to_dict(), metas, labels, args.folds, args.seed, args.group_by)
        provenance.write(args.out, "records", made_from, files=[MANIFEST, FOLDS])
    c = manifest.counts
    errors = fs.join(args.out, "errors.csv")
    print(f"wrote {c['images']} images, {c['cells']} cells in {c['shards']} x 2 shards to {args.out}; "
          f"{c['errors']} errors" + (f" (see {errors})" if c["errors"] else ""))
    if not c["images"]:
        raise BuildError(f"no image could be built; {errors} says why for each")
    return 0


def _planned(out: str) -> list:
    return json.loads(fs.read_text(fs.join(out, PLAN)))["shards"] if fs.exists(fs.join(out, PLAN)) else []


def _clear(out: str) -> None:
    """What a previous build left (``--overwrite``)."""
    if not fs.exists(out):
        return
    for name in fs.listdir(out):
        if name.endswith(".tfrec") or ".tfrec.tmp-" in name or name in (PLAN, MANIFEST, FOLDS, provenance.FILE):
            fs.remove(fs.join(out, name))
    if fs.exists(fs.join(out, "_meta")):
        for name in fs.listdir(fs.join(out, "_meta")):
            fs.remove(fs.join(out, "_meta", name))


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
    b.add_argument("--segmenter", default="classical",
                   help="classical | hpacellseg:nuclei=PATH,cell=PATH | precomputed:DIR")
    b.add_argument("--image-size", type=at_least(16), default=512, help="side of the stored image in px")
    b.add_argument("--cell-size", type=at_least(8), default=128, help="side of the stored cell crops in px")
    b.add_argument("--shard-mb", type=at_least(0.001, float), default=150.0, help="target shard size in MB")
    b.add_argument("--workers", type=at_least(1), default=1)
    b.add_argument("--folds", type=at_least(1), default=5, help="1 = no validation folds")
    b.add_argument("--group-by", choices=GROUPINGS, default="antibody",
                   help="keep in one fold the fields of one antibody (default) or one well, as their IDs tell "
                   "(HPA's {antibody}_{plate}_{well}_{field}); none: every image on its own")
    b.add_argument("--seed", type=int, default=0, help="seeds the shard shuffle and the folds")
    b.add_argument("--compression", choices=("none", "gzip"), default="none")
    b.add_argument("--bit-depth", type=int, choices=(8, 16), default=8,
                   help="stored pixels: 8 (default) or 16 (keeps the precision of 16-bit files; the models "
                   "trained on them carry it in their input contract)")
    b.add_argument("--runner", choices=("local", "beam"), default="local")
    b.add_argument("--beam-options", default="", help='Beam pipeline options, written with "=": --beam-options="--runner=DataflowRunner --project=P ..."')
    b.add_argument("--overwrite", action="store_true", help="delete what a previous build left and start over")
    b.add_argument("--replace-changed", action="store_true",
                   help="when OUT holds records made from other inputs, build anew there (default: refuse)")
    b.add_argument("--verify", action="store_true", help="check the sha256 of finished shards before skipping them")
    i = sub.add_parser("inspect", help="print the manifest summary and write a contact sheet PNG")
    i.add_argument("out")
    i.add_argument("--png", help="where to write the contact sheet (default OUT/contact_sheet.png)")
    i.add_argument("--n", type=at_least(0), default=6, help="images on the sheet")
    i.add_argument("--verify", action="store_true", help="check every shard's sha256 and record count")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build(args)
    from tfrecord_builder.inspect import inspect

    return inspect(args.out, args.png, args.n, args.verify)


if __name__ == "__main__":
    sys.exit(run(main))
