"""Segment test images, score every cell with trained models, write the Kaggle submission.

    python predict.py --data synth/test --models image/best.keras cells/best.keras --out submission.csv \\
        [--segmenter classical|hpacellseg|precomputed:DIR] [--tta none|flip|d4] \\
        [--combine image_x_cell|blend|geometric|cell|image] [--cell-weight W] [--negative model|complement|mean] \\
        [--small-cells FRACTION FACTOR] [--border-factor F] [--average mean|rank] [--weights 1 1] \\
        [--cell-view masked|centred|cam|none] \\
        [--strategy auto|tpu|mirrored|cpu|cpu_mirrored] [--precision float32|mixed_float16|mixed_bfloat16|keep] [--jit] \\
        [--sample-submission sample_submission.csv] [--truth synth/truth] \\
        [--time-budget 8h30m] [--budget-drop tta,cell_view,models]

Each model's input contract (saved inside it by train_tpu.py) says how its inputs are cut and which
segmenter made its training masks; that segmenter is used unless --segmenter names one (another kind is
refused unless --force). The cells of --group images share fixed-size batches, under --strategy.

The combination flags (:mod:`hpa_tf.inference.combine`) say how the models' image- and cell-level
scores become one per cell: the rule, the Negative class, lower scores for small and edge cells,
probabilities or ranks averaged (what each gained on the demo: ``docs/recipe.md``).

Every cell gets all 19 classes with their confidence. Scores are cached per image in
``OUT.cache/`` (a killed run resumes; another ``--combine`` reuses them); bad images get an empty
row and are listed in ``OUT.errors.csv``; ``OUT.summary.json`` has the seconds per image by stage
(and the mAP with ``--truth``); ``OUT.overlays/`` shows cells coloured by their top class.

``--time-budget 8h30m`` (also 90m, 2h, 3600s, 3600) keeps the run within that time: the first
--group images are scored with all the work and timed, the total is projected by image size, and
work is dropped in the --budget-drop order until it fits (TTA, then the cell views, then the models
from the last given; the first model and every image's row are never dropped). The plan is printed
before the rest runs, checked again after every group, and recorded in OUT.summary.json
(docs/time_budget.md).

The same command is ``python -m hpa_tf.predict`` and ``hpa-tf-predict`` (an installed package has no predict.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from hpa_tf.cli import at_least, doc_parser, run
from hpa_tf.inference.budget import parse_duration
from hpa_tf.inference.combine import AVERAGES, CELL_VIEWS, CELL_WEIGHTS, NEGATIVE_RULES, RULES, Combination
from hpa_tf.inference.plan import DEFAULT_ORDER, parse_drop_order
from hpa_tf.inference.tta import TTA_MODES


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_combination_args(parser: argparse.ArgumentParser, default: Combination | None = None) -> None:
    """The flags of a :class:`Combination` (predict.py's and the job's), ``default``'s values by default."""
    default = default or Combination()
    parser.add_argument("--combine", choices=RULES, default=default.rule,
                        help=f"(default {default.rule}) image_x_cell: mean image x mean cell score; blend: --cell-weight x "
                        "cell + the rest x image; geometric: image ** (1 - --cell-weight) x cell ** --cell-weight; "
                        "cell: the cell scores alone; image: the image score on every cell")
    parser.add_argument("--cell-weight", type=float, default=default.cell_weight,
                        help="with --combine blend or geometric: the cell level's share, 0 to 1 (default: "
                        + ", ".join(f"{w:g} with {rule}" for rule, w in CELL_WEIGHTS.items()) + ")")
    parser.add_argument("--negative", choices=NEGATIVE_RULES, default=default.negative,
                        help="Negative as the models say, as prod(1 - p) of the 18 other classes, or the mean of both")
    parser.add_argument("--small-cells", nargs=2, type=float, metavar=("FRACTION", "FACTOR"),
                        default=[default.small_area, default.small_factor],
                        help="scores of a cell smaller than FRACTION x its image's median cell area times FACTOR")
    parser.add_argument("--border-factor", type=float, default=default.border_factor,
                        help="scores of a cell cut by the image's edge times this")
    parser.add_argument("--average", choices=AVERAGES, default=default.average,
                        help="across models: of the probabilities, or of their ranks over the test set")


# Each Combination field's flag, so that a bad value's message names what the user typed.
FLAG_OF_FIELD = {"cell_weight": "--cell-weight", "small_area": "--small-cells FRACTION", "small_factor": "--small-cells FACTOR",
                 "border_factor": "--border-factor", "rule": "--combine", "negative": "--negative", "average": "--average"}


def combination_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Combination:
    """The :class:`Combination` of parsed flags; a bad value is a usage error naming it."""
    if args.cell_weight is not None and args.combine not in CELL_WEIGHTS:
        parser.error(f"--cell-weight applies to --combine {' or '.join(CELL_WEIGHTS)} only, not {args.combine}: "
                     "leave it out, or name one of those rules")
    try:
        combination = Combination(args.combine, args.cell_weight, args.negative, args.small_cells[0],
                                  args.small_cells[1], args.border_factor, args.average)
        return dataclasses.replace(combination, cell_weight=combination.weight)  # the share used, recorded
    except ValueError as err:
        message = str(err)
        for field, flag in FLAG_OF_FIELD.items():
            message = message.replace(f"combine {field}", flag)
        parser.error(message)


def combination_argv(combination: Combination) -> list[str]:
    """The flags that give ``combination`` (to pass it to a predict.py command).

    >>> combination_argv(Combination("cell"))[:2]
    ['--combine', 'cell']
    """
    c = combination
    weight = [] if c.weight is None else ["--cell-weight", str(c.weight)]
    return ["--combine", c.rule, *weight, "--negative", c.negative, "--small-cells",
            str(c.small_area), str(c.small_factor), "--border-factor", str(c.border_factor), "--average", c.average]


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m hpa_tf.predict", __doc__)
    parser.add_argument("--data", required=True, help="folder of test images ({ID}_red.png ...)")
    parser.add_argument("--models", nargs="+", required=True, help=".keras files from train_tpu.py (image, cell-bag and/or single-cell models)")
    parser.add_argument("--out", required=True, help="submission CSV to write")
    parser.add_argument("--segmenter", help="classical | hpacellseg:nuclei=PATH,cell=PATH | precomputed:DIR "
                        "(default: the one the models were trained with)")
    parser.add_argument("--force", action="store_true", help="predict even with another segmenter than the models' training")
    parser.add_argument("--strategy", default="auto", choices=("auto", "tpu", "mirrored", "cpu", "cpu_mirrored"),
                        help="the models under this tf.distribute strategy (as train_tpu.py); auto: a TPU or several GPUs")
    parser.add_argument("--logical-cpus", type=at_least(0), default=0, help="with cpu_mirrored: replicas on the CPU")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the model calls (GPU; TPUs always compile)")
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_float16", "mixed_bfloat16", "keep"),
                        help="compute dtype of the models, whatever they were trained in (outputs stay float32); keep: as trained")
    parser.add_argument("--group", type=at_least(1), default=8, help="images scored together (their cells share batches)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none")
    add_combination_args(parser)
    parser.add_argument("--weights", nargs="+", type=float, help="one weight per model (default: equal)")
    parser.add_argument("--cell-view", choices=CELL_VIEWS, default="masked",
                        help="how an image model scores each cell: its CAM over the cell's mask (cam), or one cell at "
                        "a time (masked, centred)")
    parser.add_argument("--batch", type=at_least(1), default=16, help="images per model call")
    parser.add_argument("--workers", type=at_least(0), default=max(1, (os.cpu_count() or 2) - 1),
                        help="CPU processes reading and segmenting ahead of the models (0: in the main process)")
    parser.add_argument("--sample-submission", help="rows and sizes in this file's order")
    parser.add_argument("--cache", help="per-image score cache (default OUT.cache)")
    parser.add_argument("--overwrite", action="store_true", help="discard a cache written with other settings")
    parser.add_argument("--overlays", type=at_least(0), default=4, help="PNG overlays of the first N images")
    parser.add_argument("--truth", help="a SynthHPA truth folder: score the submission and print per-class AP")
    parser.add_argument("--truth-split", default="test")
    parser.add_argument("--time-budget", type=_duration, metavar="DURATION",
                        help="the whole run's time, e.g. 8h30m, 90m, 3600s: work is dropped to fit, never images")
    parser.add_argument("--budget-drop", default=DEFAULT_ORDER, metavar="ORDER",
                        help="what --time-budget drops first: comma-separated tta, cell_view, model:N, models "
                        "(the models from the last given); pieces left out are never dropped")
    args = parser.parse_args(argv)
    try:
        parse_drop_order(args.budget_drop, len(args.models))
    except ValueError as err:
        parser.error(f"--budget-drop: {err}")
    combination = combination_from(args, parser)
    if args.weights and len(args.weights) != len(args.models):
        parser.error(f"--weights: {len(args.weights)} values for {len(args.models)} models")
    if args.weights and (min(args.weights) < 0 or sum(args.weights) <= 0):
        parser.error(f"--weights {' '.join(map(str, args.weights))}: weights must be >= 0 and not all 0")

    from hpa_tf.inference.runner import (  # TensorFlow loads here, after --help
        RunConfig,
        run,
    )

    cfg = RunConfig(
        data=args.data, models=args.models, out=args.out, segmenter=args.segmenter, tta=args.tta,
        combine=combination, weights=args.weights, cell_view=args.cell_view, batch=args.batch, workers=args.workers,
        sample_submission=args.sample_submission, cache=args.cache, overwrite=args.overwrite, overlays=args.overlays,
        truth=args.truth, truth_split=args.truth_split, strategy=args.strategy, logical_cpus=args.logical_cpus,
        jit=args.jit, precision=args.precision, group=args.group, force=args.force,
        time_budget=args.time_budget, budget_drop=args.budget_drop,
    )
    run(cfg)
    return 0


def cli() -> int:
    """The console script."""
    return run(main)


if __name__ == "__main__":
    sys.exit(cli())
