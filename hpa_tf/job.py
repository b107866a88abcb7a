"""The main job end to end, on SynthHPA or on any folder in the competition's layout.

    python -m hpa_tf.job --run runs/demo                        # SynthHPA, generated into runs/demo/synth
    python -m hpa_tf.job --run OUT --data DIR                   # DIR/train/, DIR/train.csv, DIR/test/,
                                                                # DIR/sample_submission.csv, DIR/truth/ (optional)
    python -m hpa_tf.job --run OUT --cell-set train.ema=0.99    # a setting of the single-cell models alone

1. records of ``DIR/train`` (``OUT/records``, ``--folds`` folds);
2. round 0, out of fold: for each of ``--splits`` splits (split k holds out the folds f with
   f % splits == k) an image model and a cell-bag model trained on the other folds
   (``OUT/round0/{image,cells}/split{k}``; ``--no-image-models``: the image models only where the labels
   or the submission use them);
3. each round r = 1 .. ``--rounds``: per-cell soft labels of every training cell from the previous
   round's models of the split that held its image out (``OUT/records/pseudo/round{r}``, scored against
   the truth when there is one), then a single-cell model per split trained on them
   (``OUT/round{r}/cell/split{k}``; these only label: validated once, after their last epoch, as
   ``--labeller-set`` says); the last round's, by default, one model on every training image
   (``OUT/round{r}/cell/all``: each image's labels are out of fold already; ``--final-fit splits``: per
   split). The single-cell models start as their config says (random weights with the demo's:
   ``--cell-init none``, chosen on held-out images); ``--cell-init cells`` starts each round's from
   the round-0 cell-bag model of their split (the model on every image from split 0's), whose
   backbone has learnt the same cell crops from the image labels;
4. prediction of ``DIR/test`` with every model (``OUT/pred/``), the submission weighing those
   ``--final-models`` names (the others at weight 0) under the combination flags of ``predict.py``
   (``--combine``, ``--negative``, ``--small-cells``, ...), copied to ``OUT/submission.csv``; by
   default the single-cell models alone, image ** 0.85 x cell ** 0.15 (``--combine geometric``), the
   image score being the best cell's (chosen by measurement: ``docs/recipe.md``);
5. ``OUT/results.md``: with ``DIR/truth`` every method scored with the competition's metric, the
   reference rows and the per-cell labels' quality; always the validation of every model and the
   minutes of every stage.

Every artifact records what it was made from (:mod:`hpa_tf.provenance`): the records their labels,
images, settings and folds; a model its settings and the fingerprints of its records and labels; a
label set its records and the content of its models. A stage is skipped only when what it would be
made from now equals what its output records and its files are intact, so a rerun (after a kill, or
with a setting, a label, an image, the fold count or a model changed) redoes exactly the stages
downstream of the change. Records made from other inputs are built anew in ``OUT/records``.

Everything that can be checked is checked before the first stage (configs and overrides, the
layout, a test folder with images); stages run as child processes that die with the job (the small
reference and scoring stages run in the job's own process, saving a TensorFlow start each); relative
paths are the caller's. Every stage is a command a user can also run alone; each is printed before it
runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hpa_tf import fs, provenance
from hpa_tf.cli import at_least, doc_parser, run
from hpa_tf.inference.combine import Combination
from hpa_tf.predict import add_combination_args, combination_argv, combination_from
from hpa_tf.synthetic.__main__ import OPTION_DEFAULTS, OPTION_FLAGS, read_params
from hpa_tf.workers import die_with_parent
from tfrecord_builder.folds import GROUPINGS


class JobError(ValueError):
    """A data folder or setting the job cannot run with; the message says what to fix."""


# The submission's default, chosen on held-out SynthHPA images (docs/recipe.md, python -m
# benchmarks.bench_combine): the single-cell models alone (when a round trains them; else all
# models, where it scored as image x cell did: 0.3817 against 0.3810 on the demo), their best cell's
# score (the image level) ** 0.85 x each cell's own ** 0.15.
DEFAULT_COMBINATION = Combination()


# The single-cell models of the rounds before the last only label the images their split held out: no
# epoch need be chosen for them, so they validate once, after the last (about a third of their time on
# the demo when they validated every epoch). Fewer epochs made worse labellers (docs/recipe.md).
LABELLER_SETS = ("train.validation_freq=0",)


@dataclass
class Job:
    """The settings of one run of the main job (the command's flags)."""

    run: str
    data: str | None = None  # a folder in the competition's layout; None: SynthHPA in run/synth
    n_train: int = 400
    n_test: int = 32
    size: int = 1024
    seed: int = 0
    workers: int = 2
    folds: int = 4
    splits: int = 2
    rounds: int = 1
    image_config: str = "demo_cpu"
    cells_config: str = "demo_cpu_cells"
    cell_config: str = "demo_cpu_cell"
    sets: list[str] = field(default_factory=list)  # --set overrides for every training
    stage_sets: dict[str, list[str]] = field(default_factory=dict)  # --image-set / --cells-set / --cell-set: one kind's
    labeller_sets: list[str] = field(default_factory=lambda: list(LABELLER_SETS))  # single-cell models that only label
    bit_depth: int = 8  # of the records: 16 keeps the precision of dim 16-bit files
    label_source: str = "cells"  # what round 1's single-cell models learn from (round 2 on: the cell models')
    cell_view: str = "masked"
    image_models: bool = True  # False: round 0 trains image models only where the labels or the submission use them
    final_models: str | None = None  # the models the submission weighs (FINAL_MODELS); None: cell, or all at --rounds 0
    combination: Combination = DEFAULT_COMBINATION
    group_by: str = "antibody"  # the records' folds keep an antibody's (or a well's) fields together
    final_fit: str = "all"  # the last round's single-cell models: one on all images, or one per split
    cell_init: str = "none"  # single-cell models start as their config says ("none"), or from their split's
    # cell-bag model ("cells"); auto: cells where the two kinds share a backbone and the config names no start of its own
    label_mix: str = "flattened"  # SynthHPA's label sets (flattened, or the real kaggle2021 ones)
    texture_scale: float = 1.0  # SynthHPA's pattern scale (0.5: finer, as on real fields)
    varying_share: float = 1.0  # SynthHPA's share of image labels that vary from cell to cell
    timings: dict[str, float] = field(default_factory=dict)
    reused: dict[str, bool] = field(default_factory=dict)  # training and labelling stages: skipped as done

    def configs(self) -> dict[str, str]:
        """Each kind of training (image, cells, cell) and its config."""
        return {"image": self.image_config, "cells": self.cells_config, "cell": self.cell_config}

    def overrides(self, kind: str) -> list[str]:
        """The user's overrides of one kind of training: ``--set``, then ``--KIND-set``."""
        return [*self.sets, *self.stage_sets.get(kind, [])]

    @property
    def data_dir(self) -> str:
        return self.data or fs.join(self.run, "synth")

    @property
    def truth(self) -> str | None:
        path = fs.join(self.data_dir, "truth")
        return path if fs.exists(fs.join(path, "images.csv")) else None

    @property
    def submitted_models(self) -> str:
        """The ``FINAL_MODELS`` name the submission weighs."""
        return self.final_models or ("cell" if self.rounds else "all")

    @property
    def trains_image_models(self) -> bool:
        """Whether round 0 trains image models: by default (the results table's rows of the image-level
        method), and with ``--no-image-models`` only for round 1's labels (``--label-source cam`` or
        ``combined``) or the submission (``--final-models`` all, image+cell, round0)."""
        return self.image_models or "image" in labelling_kinds(self) | set(FINAL_MODELS[self.submitted_models])

    def cell_models(self, r: int) -> int:
        """How many single-cell models round ``r`` trains (one on every image in the last round of
        ``--final-fit all``)."""
        return 1 if self.final_fit == "all" and r == self.rounds else self.splits

    def split_folds(self, k: int) -> list[int]:
        return [f for f in range(self.folds) if f % self.splits == k]


# The models the submission weighs (the others are scored too, for the results table, at weight 0).
FINAL_MODELS = {"all": ("image", "cells", "cell"), "cell": ("cell",), "cells+cell": ("cells", "cell"),
                "image+cell": ("image", "cell"), "round0": ("image", "cells")}


def final_weights(job: Job) -> list[float]:
    """One weight per model the job predicts with (its round-0 image and cell-bag models, then the
    last round's single-cell models): 1 for the kinds ``job.submitted_models`` names (all: every one
    of these; earlier rounds' single-cell models only label), else 0.

    >>> final_weights(Job("r", final_models="cell", final_fit="splits")), final_weights(Job("r"))
    ([0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0])
    >>> final_weights(Job("r", image_models=False))
    [0.0, 0.0, 1.0]
    """
    kinds = ["image"] * job.splits * job.trains_image_models + ["cells"] * job.splits
    kinds += ["cell"] * job.cell_models(job.rounds) if job.rounds else []
    name = job.submitted_models
    chosen = set(kinds) if name == "all" else set(FINAL_MODELS[name])
    if not chosen <= set(kinds):
        raise JobError(f"--final-models {name}: the job trains no {' or '.join(sorted(chosen - set(kinds)))} model with "
                       f"--rounds {job.rounds}; choose among {', '.join(FINAL_MODELS)} (with --rounds 0: all or round0)")
    return [1.0 if kind in chosen else 0.0 for kind in kinds]


def check_layout(data: str) -> None:
    """A competition-layout folder, or one line that says what is missing."""
    from hpa_tf.io.index import scan_image_ids

    if not fs.exists(data):
        raise JobError(f"--data {data}: no such folder")
    for name, what in (("train", "the training images ({ID}_red.png ...)"), ("train.csv", "the image labels (ID,Label)"),
                       ("test", "the test images")):
        if not fs.exists(fs.join(data, name)):
            raise JobError(f"--data {data}: no {name} ({what}); expected the competition's layout: train/, train.csv, "
                           "test/, sample_submission.csv, and truth/ if there is one")
    if not scan_image_ids(fs.join(data, "test"), complete=False):
        raise JobError(f"--data {data}: test/ holds no image ({{ID}}_red.png, _green, _blue, _yellow): nothing to predict")


# Settings each stage gets from the job: a --set of one would put every model in one folder, or
# train the out-of-fold models on the folds they must label.
KIND_NAMES = {"image": "the image models", "cells": "the cell-bag models", "cell": "the single-cell models"}
JOB_KEYS = ("train.model_dir", "data.records", "data.val_folds", "data.val_fold", "data.cell_labels", "data.kind",
            "model.kind")


def check_settings(job: Job) -> None:
    """Every training config with the job's overrides, before any stage runs (a wrong key or value
    is one line naming it, not an error after an hour of work); keys the job sets itself are refused.
    Settles ``job.cell_init`` (auto: cells or none, said in one line when none)."""
    from hpa_tf.config import ConfigError, apply_overrides, load_config

    given = [("--set", s) for s in job.sets] + [(f"--{kind}-set", s) for kind, sets in job.stage_sets.items() for s in sets]
    given += [("--labeller-set", s) for s in job.labeller_sets]
    owned = [f"{flag} {s.strip()}" for flag, s in given if set(_keys(s)) & set(JOB_KEYS)]
    if owned:
        raise JobError(f"{', '.join(owned)}: the job sets {', '.join(JOB_KEYS)} for each stage itself (the "
                       "output folders, records, out-of-fold splits and labels); use --run, --folds, --splits, "
                       "--label-source and the --*-config options instead")
    _check_synth_folder(job)
    starts = {}
    for kind, config in job.configs().items():
        what = f"({KIND_NAMES[kind]}: --{kind}-config {config})"
        try:
            common = load_config(config, ["data.val_folds=[0]", *job.sets])
        except ConfigError as err:
            hint = " (in the job: --image-set / --cell-set give it to those models alone)" if (
                kind == "cells" and "augment.mixup" in str(err)) else ""
            raise JobError(f"{err} {what}{hint}") from err
        try:
            common = apply_overrides(common, job.stage_sets.get(kind, []), flag=f"--{kind}-set")
        except ConfigError as err:
            raise JobError(f"{err} {what}") from err
        if common.model.init_from and not fs.exists(common.model.init_from):
            raise JobError(f"model.init_from: {common.model.init_from} not found {what}")
        # the models of this kind that label a later round's cells (single-cell ones: with --labeller-set)
        labelling, labelling_what = common, what
        if kind == "cell":
            labelling_what = f"({KIND_NAMES[kind]} that label: --cell-config {config} with --labeller-set)"
            try:
                labelling = apply_overrides(common, job.labeller_sets, flag="--labeller-set")
            except ConfigError as err:
                flagged = str(err) if str(err).startswith("--labeller-set") else f"--labeller-set: {err}"
                raise JobError(f"{flagged} {labelling_what}") from err
            if labelling.model.init_from and not fs.exists(labelling.model.init_from):
                raise JobError(f"model.init_from: {labelling.model.init_from} not found {labelling_what}")
        starts[kind] = (common.model.backbone, common.model.init_from or common.model.weights, what)
        if kind in labelling_kinds(job) and labelling.model.init_from:
            _check_labeller_start(job, kind, labelling.model.init_from, labelling_what)
    extra = [s for s in job.labeller_sets if s not in LABELLER_SETS]
    if job.rounds < 2 and extra:
        print(f"--labeller-set {' '.join(extra)}: no model only labels with --rounds {job.rounds} (the single-cell "
              "models of the rounds before the last of --rounds 2 do)")
    if not job.image_models and job.trains_image_models:
        why = (f"--label-source {job.label_source}" if "image" in labelling_kinds(job)
               else f"--final-models {job.submitted_models}")
        print(f"--no-image-models: round 0 trains image models all the same, {why} uses them")
    _settle_cell_init(job, starts)


def labelling_kinds(job: Job) -> set[str]:
    """The kinds of model whose split models label a later round's cells (``--label-source`` for
    round 1; the single-cell models label round 2 on).

    >>> sorted(labelling_kinds(Job("r", rounds=2, label_source="combined")))
    ['cell', 'cells', 'image']
    """
    by_source = {"cells": {"cells"}, "cam": {"image"}, "combined": {"image", "cells"}, "cell": {"cell"}}
    return set().union(*(by_source[label_source(job, r)] for r in range(1, job.rounds + 1)))


def label_source(job: Job, round_: int) -> str:
    """What round ``round_``'s per-cell labels come from: ``--label-source`` (round 0's models) for
    round 1, the previous round's single-cell models (``cell``) after it."""
    return job.label_source if round_ == 1 else "cell"


def _check_labeller_start(job: Job, kind: str, start: str, what: str) -> None:
    """A config's ``model.init_from`` starts every split's model of a kind from one file, and these
    models label the images their split held out: a start trained on this run's records has seen
    them (refused); any other start is said in one line, since the job cannot tell what it saw."""
    if _trained_on_the_runs_records(job, start):
        hint = "; --cell-init cells starts each split's from its own split's cell-bag model" if kind == "cell" else ""
        raise JobError(f"model.init_from {start} {what} was trained on this run's records, and it "
                       f"would start {KIND_NAMES[kind]} of every split, which label the images their split held out: "
                       f"their labels would come from a model that saw those images. Drop it, or start from a "
                       f"model trained on other data{hint}")
    print(f"{KIND_NAMES[kind]} of every split start from {start} {what} and label the images their split held "
          f"out: their labels are out of fold only if it never saw this run's training images")


def _trained_on_the_runs_records(job: Job, start: str) -> bool:
    """Whether a model file's training folder names the run's records (by path, or by the records'
    fingerprint its provenance keeps: a run folder copied or moved elsewhere still matches)."""
    import yaml

    from hpa_tf.training.folder import TrainingFolder

    records = fs.join(job.run, "records")
    folder = TrainingFolder.of(start)[0]
    try:
        named = (folder.config().get("data") or {}).get("records")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):  # not a training folder: nothing to compare
        named = None
    if named and fs.canonical(named) == fs.canonical(records):
        return True
    made, ours = provenance.read(folder.path), provenance.read(records)
    return bool(made and ours and made.made_from.get("records") == ours.fingerprint)


def _synth_options(job: Job) -> dict:
    """The SynthHPA options (``label_mix``, ``texture_scale``, ``varying_share``) the job generates with."""
    return {key: getattr(job, key) for key in OPTION_DEFAULTS}


def _check_synth_folder(job: Job) -> None:
    """A rerun into a run whose SynthHPA was made with other options would be refused by the generator
    with advice for its own flags: say what differs and what to do in the job's terms."""
    old = None if job.data else read_params(job.data_dir)
    if old is None:
        return
    flags = {"seed": "--seed", "sizes": "--size", **OPTION_FLAGS}
    now = {"seed": job.seed, "sizes": [job.size], **_synth_options(job)}
    shown = lambda v: ",".join(map(str, v)) if isinstance(v, list) else v  # noqa: E731 - sizes as --size takes them
    changed = [f"{flags[k]} {shown(old.get(k))} there, {shown(v)} now" for k, v in now.items() if old.get(k) != v]
    if changed:
        raise JobError(f"{job.data_dir} holds SynthHPA made with other options ({'; '.join(changed)}): give those "
                       f"options to go on with this run, another --run, or delete {job.data_dir} to start it over")


def _keys(override: str) -> list[str]:
    """The config keys a ``KEY=VALUE`` override sets: ``train.epochs=3`` -> train.epochs, and
    ``train={epochs: 3, model_dir: x}`` -> train.epochs, train.model_dir."""
    from hpa_tf.config import parse_value

    key, _, raw = override.partition("=")
    key = key.strip()
    try:
        value = parse_value(raw)
    except Exception:  # noqa: BLE001 - a value YAML cannot read is reported by the config check
        return [key]
    return [f"{key}.{sub}" for sub in value] if isinstance(value, dict) else [key]


def _settle_cell_init(job: Job, starts: dict[str, tuple]) -> None:
    """``--cell-init``: auto becomes cells or none (said in one line when none, with the reason);
    cells where it cannot work is an error. ``starts``: each kind's (backbone, model.init_from or
    model.weights, what)."""
    (bag_backbone, _, where), (backbone, own_start, what) = starts["cells"], starts["cell"]
    why, fix = "", ""
    if not job.rounds:
        why = "--rounds 0 trains no single-cell model"
    elif own_start:
        why, fix = f"their config starts them from {own_start} {what}", "drop that model.init_from / model.weights"
    elif backbone != bag_backbone:
        why = f"their backbone is {backbone} {what} and the cell-bag models' {bag_backbone} {where}"
        fix = "give both the same model.backbone"
    if job.cell_init == "auto":
        job.cell_init = "none" if why else "cells"
        if why and job.rounds:
            print(f"the single-cell models start as their config says, not from the cell-bag models: {why}")
    elif job.cell_init == "cells" and why:
        raise JobError(f"--cell-init cells starts the single-cell models from the cell-bag models, but {why}: "
                       f"use --cell-init none" + (f", or {fix}" if fix else ""))


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _stage(job: Job, name: str, cmd: list[str], done: bool = False,
           in_process: Callable[[list[str] | None], int] | None = None) -> None:
    """Run one stage's command (unless ``done``), printed first, timed into ``job.timings``.
    ``in_process``: the command's ``main``, called here with its arguments instead of starting a
    Python (a small stage, seconds of work: a child would spend more starting TensorFlow)."""
    if done:
        print(f"== {name}: done before, skipped")
        return
    print(f"== {name}: {shlex.join(cmd)}", flush=True)
    start = time.perf_counter()
    if in_process is not None:
        code = run(in_process, cmd[3:])  # cmd: python -m MODULE ARGS...
        sys.stdout.flush()
    else:
        # die_with_parent: a killed job (kill -9 too) takes its running stage with it
        code = subprocess.run(cmd, check=False, preexec_fn=die_with_parent).returncode
    job.timings[name] = job.timings.get(name, 0.0) + time.perf_counter() - start
    if code:
        raise JobError(f"stage {name!r} failed (exit code {code}); its command is printed above: "
                       "fix what it says and run the job again (finished stages are skipped)")


def _train(job: Job, name: str, kind: str, model_dir: str, extra: list[str]) -> None:
    from hpa_tf.config import load_config
    from hpa_tf.training.folder import TrainingFolder

    config = job.configs()[kind]
    overrides = [*job.overrides(kind), f"data.records={fs.join(job.run, 'records')}", f"train.model_dir={model_dir}", *extra]
    folder, effective = TrainingFolder(model_dir), load_config(config, overrides)
    done = folder.is_current(effective)
    _stage(job, name, _python("-m", "hpa_tf.train", "--config", config, "--set", *overrides), done=done)
    job.reused[name] = done
    if not done and not folder.is_current(effective, say=False):
        raise JobError(f"stage {name!r} finished but {model_dir} holds no finished model of it (no provenance.json); "
                       "was it removed while the job ran?")


def models_of(job: Job, round_: int, kind: str) -> list[str]:
    if kind == "cell" and job.cell_models(round_) == 1:
        return [fs.join(job.run, f"round{round_}", kind, "all")]
    return [fs.join(job.run, f"round{round_}", kind, f"split{k}") for k in range(job.splits)]


def cell_init(job: Job, k: int) -> list[str]:
    """The override that starts a single-cell model of split ``k`` from the round-0 cell-bag model of
    that split (``--cell-init cells``): it learnt from the images the single-cell model learns from, so
    an out-of-fold labeller stays out of fold."""
    return [f"model.init_from={model_file(models_of(job, 0, 'cells')[k])}"] if job.cell_init == "cells" else []


def model_file(model_dir: str) -> str:
    """The model a stage's folder submits: the best validated epoch, or the last one of a model
    trained on every fold (no validation)."""
    return fs.join(model_dir, "last.keras" if model_dir.rstrip("/").endswith("/all") else "best.keras")


def run_job(job: Job) -> dict:
    """Every stage of the job; returns what ``OUT/results.md`` reports."""
    check_settings(job)
    weights = final_weights(job)
    if job.rounds and job.submitted_models == "round0":
        print(f"--final-models round0: the {job.rounds} single-cell round(s) are trained and scored for results.md, "
              "but the submission weighs none of them (--rounds 0 skips them)")
    if job.data:
        check_layout(job.data)
    for stale in ("submission.csv", "results.md", fs.join("pred", "submission.csv"), fs.join("pred", "submission.summary.json"),
                  fs.join("report", "results.md"), fs.join("report", "results.json")):  # rewritten at the end: a
        fs.remove(fs.join(job.run, stale))  # killed rerun must not leave the last run's look current
    if not job.data:
        _stage(job, "generate SynthHPA", _python("-m", "hpa_tf.synthetic", "--out", job.data_dir, "--n-train",
                                                  str(job.n_train), "--n-test", str(job.n_test), "--size", str(job.size),
                                                  "--seed", str(job.seed), "--workers", str(job.workers),
                                                  *(a for k, v in _synth_options(job).items() for a in (OPTION_FLAGS[k], str(v)))))
    data, records, truth = job.data_dir, fs.join(job.run, "records"), job.truth
    _stage(job, "build records", _python("-m", "tfrecord_builder", "build", "--data", fs.join(data, "train"), "--labels",
                                         fs.join(data, "train.csv"), "--out", records, "--workers", str(job.workers),
                                         "--shard-mb", "20", "--folds", str(job.folds), "--group-by", job.group_by,
                                         "--bit-depth", str(job.bit_depth),
                                         "--replace-changed"))
    sample = fs.join(data, "sample_submission.csv")
    sample_args = ["--sample-submission", sample] if fs.exists(sample) else []
    references = {}
    if truth:
        from hpa_tf import baselines, metrics

        masks = fs.join(job.run, "masks")
        _stage(job, "segment the test images", _python("-m", "hpa_tf.segmentation", "--data", fs.join(data, "test"),
                                                        "--out", masks, "--workers", str(job.workers), "--truth", truth))
        for kind, label, extra in (("image-labels", "oracle image labels given to every true cell (labels no method has "
                                    "at test time)", []),
                                   ("perfect", "perfect answer on the predicted masks (the ceiling segmentation leaves)",
                                    ["--masks", masks])):
            sub = fs.join(job.run, f"reference_{kind}.csv")
            _stage(job, f"reference {kind}", _python("-m", "hpa_tf.baselines", "--data", data, "--kind", kind, *extra,
                                                     "--out", sub), in_process=baselines.main)
            _stage(job, f"score reference {kind}", _python("-m", "hpa_tf.metrics", "--truth", truth, "--submission", sub,
                                                           "--json", f"{sub[:-4]}.json"), in_process=metrics.main)
            references[label] = f"{sub[:-4]}.json"
    for k in range(job.splits):
        folds = json.dumps(job.split_folds(k))
        if job.trains_image_models:
            _train(job, f"round 0 image model, split {k}", "image", models_of(job, 0, "image")[k],
                   [f"data.val_folds={folds}"])
        _train(job, f"round 0 cell-bag model, split {k}", "cells", models_of(job, 0, "cells")[k],
               [f"data.val_folds={folds}"])
    final = models_of(job, 0, "image") * job.trains_image_models + models_of(job, 0, "cells")
    labellers, trained = final, list(final)
    quality = {}
    for r in range(1, job.rounds + 1):
        labels = fs.join(records, "pseudo", f"round{r}")
        source = label_source(job, r)
        from hpa_tf.pseudo.oof import labels_made_from

        done = provenance.is_current(labels, "labels", labels_made_from(records, labellers, source, True, bool(truth)))
        job.reused[f"round {r} per-cell labels, out of fold"] = done
        _stage(job, f"round {r} per-cell labels, out of fold",
               _python("-m", "hpa_tf.pseudo", "--records", records, "--out", labels, "--source", source,
                       "--models", *labellers, *(["--truth", truth] if truth else [])), done=done)
        meta = json.loads(fs.read_text(fs.join(labels, "meta.json")))
        if "quality" in meta:
            quality[r] = meta["quality"]
        if job.cell_models(r) == 1:
            _train(job, f"round {r} single-cell model, all folds", "cell", models_of(job, r, "cell")[0],
                   ["data.val_folds=[]", f"data.cell_labels={labels}", *cell_init(job, 0)])
        else:
            for k in range(job.splits):
                folds = json.dumps(job.split_folds(k))
                labeller = job.labeller_sets if r < job.rounds else []
                _train(job, f"round {r} single-cell model, split {k}", "cell", models_of(job, r, "cell")[k],
                       [*labeller, f"data.val_folds={folds}", f"data.cell_labels={labels}", *cell_init(job, k)])
        labellers = models_of(job, r, "cell")
        trained += labellers
    if job.rounds:
        final += labellers
    pred = fs.join(job.run, "pred", "submission.csv")
    _stage(job, "predict the test images",
           _python("-m", "hpa_tf.predict", "--data", fs.join(data, "test"), "--models",
                   *[model_file(m) for m in final], "--out", pred, *sample_args, "--workers", "1",
                   "--cell-view", job.cell_view, "--weights", *map(str, weights), *combination_argv(job.combination),
                   "--overwrite", *(["--truth", truth] if truth else [])))
    fs.write_bytes(fs.join(job.run, "submission.csv"), fs.read_bytes(pred))
    results = {}
    if truth:
        from hpa_tf.inference.report import report

        start = time.perf_counter()
        results = report(pred, truth, sample if sample_args else None, references, fs.join(job.run, "report"))
        job.timings["report"] = time.perf_counter() - start
    write_results(job, trained, results, quality)
    return {"results": results, "quality": quality, "timings": job.timings}


def _validation(model_dir: str) -> str:
    from hpa_tf.training.folder import TrainingFolder

    if model_file(model_dir).endswith("last.keras"):
        return "trained on every fold: nothing held out"
    best = TrainingFolder(model_dir).best_epoch()
    if best is None:
        return "no log"
    return (f"epoch {int(best['epoch']) + 1}/{best['epochs']}: val AUC {best.get('val_auc', float('nan')):.3f}, "
            f"val mAP {best.get('val_map', float('nan')):.3f}")


def write_results(job: Job, models: list[str], results: dict, quality: dict) -> None:
    """``OUT/results.md``: the methods' mAP (with a truth), the labels' quality, the validation of
    ``models`` (every model the job trained), minutes."""
    from hpa_tf.pseudo.oof import SOURCES
    from hpa_tf.pseudo.quality import quality_markdown

    labels = f"round-1 labels from `{job.label_source}`" + (
        ", later rounds' from the previous round's single-cell models of each split (`--labeller-set "
        f"{' '.join(job.labeller_sets)}`)" if job.rounds >= 2 else "")
    lines = [f"# The main job on {job.data_dir}", "",
             f"Folds {job.folds}, out-of-fold splits {job.splits}, rounds {job.rounds} (last round's single-cell "
             f"models: `--final-fit {job.final_fit}`, `--cell-init {job.cell_init}`), {labels}, "
             f"cell view `{job.cell_view}`; configs {job.image_config}, {job.cells_config}, "
             f"{job.cell_config}" + (f" with `--set {' '.join(job.sets)}`" if job.sets else "")
             + ("".join(f", SynthHPA `{OPTION_FLAGS[k]} {v}`" for k, v in _synth_options(job).items()
                        if v != OPTION_DEFAULTS[k]) if not job.data else "")
             + "".join(f", `--{kind}-set {' '.join(sets)}`" for kind, sets in job.stage_sets.items() if sets) + ". Submission: "
             f"`--final-models {job.submitted_models}`, {job.combination.describe()}.", ""]
    if results:
        lines += ["| method | mAP |", "|---|---|"] + [f"| {k} | {v['mAP']:.4f} |" for k, v in results.items()] + [""]
    else:
        lines += ["No truth folder: the submission is not scored here.", ""]
    for r, q in quality.items():
        names = {"naive": "naive: every cell gets its image's labels", **SOURCES, "combined": "combined: the mean of the sources"}
        if len(set(q["sources"]) - {"naive", "combined"}) < 2:  # the mean of one source is that source
            names.pop("combined")
        lines += [f"## Round {r} per-cell labels against the truth", "", quality_markdown(q, names)]
    lines += ["## Validation (image level, held-out folds)", "", "| model | best epoch |", "|---|---|"]
    lines += [f"| {m} | {_validation(m)} |" for m in models] + [""]
    total = sum(job.timings.values())
    lines += ["## Minutes (this run; reused: done by an earlier run with the same inputs)", "", "| stage | minutes |",
              "|---|---|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in job.timings.items()]
    lines += [f"| {k} | reused |" for k, reused in job.reused.items() if reused] + [f"| **total** | **{total / 60:.1f}** |", ""]
    fs.write_text(fs.join(job.run, "results.md"), "\n".join(lines))
    print(f"wrote {fs.join(job.run, 'submission.csv')} and {fs.join(job.run, 'results.md')} ({total / 60:.1f} min)")


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m hpa_tf.job", __doc__)
    parser.add_argument("--run", required=True, help="output folder")
    parser.add_argument("--data", help="a folder in the competition's layout (default: generate SynthHPA into RUN/synth)")
    parser.add_argument("--n-train", type=at_least(1), default=400, help="SynthHPA training images")
    parser.add_argument("--n-test", type=at_least(1), default=32, help="SynthHPA test images")
    parser.add_argument("--size", type=at_least(64), default=1024, help="SynthHPA image size")
    parser.add_argument("--seed", type=int, default=0, help="SynthHPA seed")
    parser.add_argument("--label-mix", choices=("flattened", "kaggle2021"), default="flattened",
                        help="SynthHPA's image label sets: flattened (rare classes made common; the results tables), or "
                        "the real Kaggle 2021 sets as often as there")
    parser.add_argument("--texture-scale", type=float, default=1.0,
                        help="SynthHPA's pattern size against the cells (0.5: finer, nearer real fields)")
    parser.add_argument("--varying-share", type=float, default=1.0,
                        help="SynthHPA's share of image labels that vary from cell to cell (1: all, the results tables; "
                        "0.5: half on every cell that can show them, the image-label oracle as on real-like data; the "
                        "Mitotic spindle always varies)")
    parser.add_argument("--workers", type=at_least(1), default=2,
                        help="processes for generating SynthHPA, building the records and segmenting the test images")
    parser.add_argument("--folds", type=at_least(2), default=4, help="folds of the records")
    parser.add_argument("--group-by", choices=GROUPINGS, default="antibody",
                        help="folds keep the fields of one antibody or well together, as the image IDs tell (see "
                        "tfrecord_builder build --group-by)")
    parser.add_argument("--splits", type=at_least(2), default=2, help="out-of-fold splits (each holds out folds f %% splits == k)")
    parser.add_argument("--rounds", type=at_least(0), default=1,
                        help="pseudo-label rounds (0: round 0's models only; 1: one single-cell model learns from round "
                        "0's labels; 2: round 1 trains a single-cell model per split (--labeller-set) and they label "
                        "round 2's cells, about 9 more minutes on the CPU demo: docs/recipe.md)")
    for kind, default in (("image", "demo_cpu"), ("cells", "demo_cpu_cells"), ("cell", "demo_cpu_cell")):
        parser.add_argument(f"--{kind}-config", default=default,
                            help=f"the config of {KIND_NAMES[kind]}: a name under hpa_tf/configs or a YAML file")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8,
                        help="of the records (16: the full precision of dim 16-bit files; see the builder)")
    parser.add_argument("--label-source", default="cells", choices=("combined", "cells", "cam"),
                        help="round 1's labels: the cell-bag models' cell heads (best on SynthHPA), the image models' "
                        "CAM x cell, or their mean; later rounds use the previous round's single-cell models")
    parser.add_argument("--image-models", action=argparse.BooleanOptionalAction, default=True,
                        help="train round 0's image models (the results table's rows of the image-level method); "
                        "--no-image-models: only where the labels (--label-source) or the submission (--final-models) "
                        "use them (the CPU demo: 20.0 minutes instead of 23.8, the same submission; turning them on or "
                        "off makes round 1's labels again)")
    parser.add_argument("--cell-view", default="masked", choices=("masked", "centred", "cam", "none"),
                        help="how prediction scores each cell with an image model (predict.py --cell-view); "
                        "none: an image model gives its image score only")
    parser.add_argument("--final-fit", choices=("all", "splits"), default="all",
                        help="the last round's single-cell models: one on every training image (the default: the images "
                        "of every split, each image's labels out of fold, nothing held out to validate on), or one per "
                        "out-of-fold split (each validated on the folds it holds out)")
    parser.add_argument("--cell-init", choices=("auto", "cells", "none"), default="none",
                        help="single-cell models start as their config says (none, the default, chosen on held-out "
                        "images: random weights unless model.weights or model.init_from), or from the round-0 cell-bag "
                        "model of their split (cells: its backbone, and its cell head and GeM exponent where they fit; "
                        "the model on every image from split 0's); auto: cells where both kinds have one backbone and "
                        "the single-cell config names no model.init_from or model.weights, else none")
    parser.add_argument("--final-models", choices=tuple(FINAL_MODELS),
                        help="the models the submission weighs (round 0's and the last round's are all scored, for the "
                        "results table): all (those), the "
                        "single-cell models alone (cell, the default; all with --rounds 0), cell-bag and single-cell, "
                        "image and single-cell, round 0's")
    parser.add_argument("--labeller-set", action="extend", nargs="+", default=list(LABELLER_SETS), metavar="KEY=VALUE",
                        help="config overrides for the single-cell models that only label (each split's, in the rounds "
                        f"before the last), after --cell-set; default {' '.join(LABELLER_SETS)}: they validate once, after "
                        "their last epoch (train.validation_freq=1: every epoch, the best one labels)")
    add_combination_args(parser, DEFAULT_COMBINATION)
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every training, e.g. train.epochs=3")
    for kind, example in (("image", "augment.mixup=0.2"), ("cells", "model.cell_loss_weight=0.3"), ("cell", "train.ema=0.99")):
        parser.add_argument(f"--{kind}-set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                            help=f"config overrides for {KIND_NAMES[kind]} alone, after --set (e.g. {example})")
    args = parser.parse_args(argv)
    if args.data and any(getattr(args, key) != default for key, default in OPTION_DEFAULTS.items()):
        parser.error("--label-mix, --texture-scale and --varying-share shape the SynthHPA the job generates; with --data "
                     "they do nothing")
    if not 0.1 <= args.texture_scale <= 4.0:
        parser.error(f"--texture-scale {args.texture_scale}: give a factor from 0.1 to 4")
    if not 0.0 <= args.varying_share <= 1.0:
        parser.error(f"--varying-share {args.varying_share}: give a share from 0 to 1")
    args.varying_share += 0.0  # -0 is 0
    if args.splits > args.folds:
        parser.error(f"--splits {args.splits} needs at least as many --folds ({args.folds})")
    job = Job(fs.absolute(args.run), args.data and fs.absolute(args.data), args.n_train, args.n_test, args.size,
              args.seed, args.workers, args.folds, args.splits, args.rounds, args.image_config, args.cells_config,
              args.cell_config, args.set, {"image": args.image_set, "cells": args.cells_set, "cell": args.cell_set},
              bit_depth=args.bit_depth, label_source=args.label_source,
              cell_view=args.cell_view, final_models=args.final_models, image_models=args.image_models,
              combination=combination_from(args, parser), label_mix=args.label_mix, texture_scale=args.texture_scale,
              varying_share=args.varying_share, final_fit=args.final_fit, cell_init=args.cell_init, group_by=args.group_by,
              labeller_sets=args.labeller_set)
    run_job(job)
    return 0


def cli() -> int:
    """The console script."""
    return run(main)


if __name__ == "__main__":
    sys.exit(cli())
