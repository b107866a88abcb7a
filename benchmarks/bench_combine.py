"""Which models and combination rules score best, from a finished job run: no model runs again on
the test set (its scores come from the run's prediction cache), so every row uses the same cells.

    python -m benchmarks.bench_combine --run runs/demo                    # the test set
    python -m benchmarks.bench_combine --run runs/splits --validation 64  # and held-out training images (--final-fit splits)
    python -m benchmarks.bench_combine --run runs/demo --image-pools      # the single-cell model's image level
    python -m benchmarks.bench_combine --run runs/heldout                 # runs/heldout/pred: predict.py --truth

Rows: combinations (:class:`hpa_tf.inference.combine.Combination`); columns: the subsets of the
job's models (``--final-models``; ``given``: all the models of a predict.py run whose kinds are no
such subset); cells: mAP with the competition metric.

``--validation N`` also scores every row on N training images per out-of-fold split, each predicted
by the models of the split that held it out (their image, cell-bag and single-cell models never saw
it; predicted once into ``RUN/combine_val/``, about a second per image on 2 CPU cores): a second
set, not the test set, to choose a default on; it needs one model per split (a job run with
``--final-fit splits``). In ``python -m benchmarks`` it reads ``runs/demo`` (``make demo`` first),
with ``--validation 64`` when that run has them.

``--image-pools`` adds a table of the single-cell models alone whose image level is pooled from their
cells otherwise than by the best cell (prediction's way): the mean, the mean of the top quarter, a
log-sum-exp (``log(mean(exp(r p))) / r``, between the mean and the max) and GeM (p = 3); rows: pools,
columns: rules.
"""

from __future__ import annotations

import argparse
import io as _io
import json
import posixpath
import sys
from collections.abc import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from hpa_tf import fs
from hpa_tf.cli import at_least
from hpa_tf.cli import run as run_cli
from hpa_tf.inference import cache
from hpa_tf.inference.combine import Combination, ModelScores
from hpa_tf.inference.runner import assemble, fill_sizes, image_order, load_cached
from hpa_tf.job import FINAL_MODELS
from hpa_tf.metrics import evaluate
from hpa_tf.truth import Truth

COMBINATIONS = [
    Combination("image_x_cell"),
    Combination("cell"),
    Combination("blend", cell_weight=0.3),
    Combination("blend", cell_weight=0.4),
    Combination("blend", cell_weight=0.5),
    Combination("blend", cell_weight=0.6),
    Combination("blend", cell_weight=0.7),
    Combination("blend", cell_weight=0.9),
    Combination("geometric", cell_weight=0.1),
    Combination("geometric", cell_weight=0.15),
    Combination("geometric", cell_weight=0.2),
    Combination("geometric", cell_weight=0.25),
    Combination("geometric", cell_weight=0.3),
    Combination("image_x_cell", negative="complement"),
    Combination("image_x_cell", negative="mean"),
    Combination("image_x_cell", small_area=0.25, small_factor=0.5),
    Combination("image_x_cell", small_area=0.5, small_factor=0.5),
    Combination("image_x_cell", border_factor=0.8),
    Combination("image_x_cell", border_factor=0.5),
    Combination("image_x_cell", average="rank"),
    Combination("blend", cell_weight=0.5, negative="mean"),
    Combination("blend", cell_weight=0.5, small_area=0.25, small_factor=0.5),
    Combination("blend", cell_weight=0.5, average="rank"),
    Combination("geometric", negative="mean"),
    Combination("geometric", small_area=0.25, small_factor=0.5),
    Combination("geometric", border_factor=0.8),
    Combination("image"),
]


def _top_quarter(cells: np.ndarray) -> np.ndarray:
    return np.sort(cells, axis=0)[-max(1, round(len(cells) / 4)):].mean(axis=0)


IMAGE_POOLS: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # (n_cells, 19) -> (19,)
    "best cell (max; prediction's)": lambda c: c.max(axis=0),
    "mean": lambda c: c.mean(axis=0),
    "mean of the top quarter": _top_quarter,
    "log-sum-exp, r = 10": lambda c: np.log(np.exp(10 * c).mean(axis=0)) / 10,
    "GeM, p = 3": lambda c: (c**3).mean(axis=0) ** (1 / 3),
}
POOL_RULES = [Combination("image"), Combination("blend", cell_weight=0.3), Combination("blend", cell_weight=0.5),
              Combination("blend", cell_weight=0.7), Combination("image_x_cell"), Combination("geometric")]


def image_pool_table(run: str) -> dict[str, dict[str, float]]:
    """{pool: {rule: mAP}} of the run's single-cell models alone on its test set, their image level
    pooled from their cells by each of :data:`IMAGE_POOLS`."""
    entries, ids, sizes, kinds, truth = _test_set(run)
    use = [k for k, kind in enumerate(kinds) if kind == "cell"]
    if not use:
        raise ValueError(f"--image-pools: {run}'s prediction has no single-cell model (a job run with --rounds 0?)")
    table: dict[str, dict[str, float]] = {}
    for pool_name, pool in tqdm(IMAGE_POOLS.items(), desc="pools", unit="pool"):
        pooled = {i: (*entry[:4], [ModelScores(pool(s.cells), s.cells) if k in use and s is not None and s.cells is not None
                                   else s for k, s in enumerate(entry[4])]) for i, entry in entries.items()}
        for rule in POOL_RULES:
            rows = assemble(pooled, ids, sizes, rule, [1.0] * len(kinds), use)
            table.setdefault(pool_name, {})[rule.describe()] = evaluate(truth, rows).map
    return table


def subsets(kinds: list[str]) -> dict[str, list[int]]:
    """``--final-models`` name -> indices of the models it weighs, for the subsets these models allow;
    ``given``: all of them, where no such subset is exactly their kinds (a predict.py run of other models).

    >>> subsets(["image", "cells", "cell"])["cells+cell"]
    [1, 2]
    >>> subsets(["cells", "cells"])
    {'given': [0, 1]}
    """
    out = {}
    for name, chosen in FINAL_MODELS.items():
        use = [k for k, kind in enumerate(kinds) if kind in chosen]
        if set(chosen) <= set(kinds):
            out[name] = use
    if not any(set(FINAL_MODELS[name]) == set(kinds) for name in out):
        out["given"] = list(range(len(kinds)))
    return out


def score_table(entries: dict, ids: list[str], sizes: dict, kinds: list[str], truth: Truth,
                combinations: list[Combination]) -> dict[str, dict[str, float]]:
    """{combination: {subset: mAP}}, the models of a subset weighed alike (whatever ``--weights`` the
    prediction had); a rule that needs cell-level scores from a subset that has none is left out."""
    table: dict[str, dict[str, float]] = {}
    weights = [1.0] * len(kinds)
    gives_cells = [any(s is not None and s.cells is not None for s in (e[4][k] for e in entries.values()))
                   for k in range(len(kinds))]
    cases = [(c, name, use) for c in combinations for name, use in subsets(kinds).items()
             if c.rule == "image" or any(gives_cells[k] for k in use)]
    for combination, name, use in tqdm(cases, desc="combinations", unit="row"):
        rows = assemble(entries, ids, sizes, combination, weights, use)
        table.setdefault(combination.describe(), {})[name] = evaluate(truth, rows).map
    if not table:
        raise ValueError("no combination can be scored: every rule here but image needs cell-level scores, and the "
                         "prediction's models gave none (image models with --cell-view none)")
    return table


def _kinds(cache_dir: str) -> list[str]:
    return [kind for kind, _ in json.loads(fs.read_text(fs.join(cache_dir, "key.json")))["sizes"]]


def _prediction_config(run: str) -> dict:
    """The settings ``RUN/pred/submission.csv`` was predicted with (``cache``: its cache folder); a
    prediction without ``--truth`` cannot be scored."""
    pred = fs.join(run, "pred", "submission.csv")
    summary = fs.join(run, "pred", "submission.summary.json")
    if not fs.exists(summary):
        raise FileNotFoundError(f"{summary}: no prediction; run the job (make demo RUN={run}) first, or predict.py "
                                f"--out {pred} --truth DIR")
    summary = json.loads(fs.read_text(summary))
    config = summary["config"]
    if not config.get("truth"):
        raise ValueError(f"{pred} was predicted without --truth: rerun predict.py with the same flags and --truth DIR "
                         "(its cache makes that quick) to score its combinations")
    config["cache"] = config.get("cache") or f"{pred}.cache"  # summaries before the cache was recorded
    key = fs.join(config["cache"], "key.json")
    if not fs.exists(key):
        raise FileNotFoundError(f"{config['cache']}: no prediction cache; predict {pred} again")
    if "cache_key" in summary and cache.identity(json.loads(fs.read_text(key))) != cache.identity(summary["cache_key"]):
        raise ValueError(f"{config['cache']} holds the scores of a later prediction with other models or settings than "
                         f"{pred}'s (its key.json differs): predict {pred} again")
    return config


def _test_set(run: str) -> tuple[dict, list[str], dict, list[str], Truth]:
    """The cached entries of the run's test set, its image IDs and sizes, the models' kinds, the truth.
    An image the prediction scored whose cache entry is gone or unreadable is an error (the table
    would be another set's)."""
    config = _prediction_config(run)
    ids, sizes = image_order(config["data"], config["sample_submission"])
    kinds = _kinds(config["cache"])
    entries = load_cached(config["cache"], ids, len(kinds))
    stem = fs.join(run, "pred", "submission")
    failed = (set(pd.read_csv(_io.StringIO(fs.read_text(f"{stem}.errors.csv")), dtype={"ID": str})["ID"])
              if fs.exists(f"{stem}.errors.csv") else set())
    lost = [i for i in ids if i not in entries and i not in failed]
    if lost:
        raise ValueError(f"{len(lost)} of {len(ids)} images of {stem}.csv have no readable entry in {config['cache']} "
                         f"({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}): predict it again with the same "
                         "flags (it scores only those) and rerun")
    fill_sizes(config["data"], ids, entries, sizes)
    return entries, ids, sizes, kinds, Truth.load(config["truth"], config.get("truth_split", "test"))


def on_test_set(run: str, combinations: list[Combination]) -> dict[str, dict[str, float]]:
    """The table on the run's test set, from ``RUN/pred/submission.csv.cache``."""
    entries, ids, sizes, kinds, truth = _test_set(run)
    return score_table(entries, ids, sizes, kinds, truth, combinations)


def split_models(run: str) -> list[list[str]]:
    """The models of each out-of-fold split the job run predicted with (round 0's image, where it
    trained them, and cell-bag models, and the last round's single-cell models, each of folder
    ``split{k}``); a folder that is no job run, or a missing model, is a FileNotFoundError that names
    it and the fix."""
    if not fs.exists(fs.join(run, "records", "folds.csv")):
        raise FileNotFoundError(f"{run} is no job run ({run}/records/folds.csv is missing): held-out training images "
                                "need the folds and models of a python -m hpa_tf.job run; leave out --validation")
    predicted = _prediction_config(run)["models"]
    by_split: dict[str, list[str]] = {}
    for model in predicted:
        by_split.setdefault(posixpath.basename(posixpath.dirname(model)), []).append(model)
    if "all" in by_split or not all(name.startswith("split") for name in by_split):
        raise FileNotFoundError(f"{run} predicted with a model trained on every image ({by_split.get('all', predicted)[0]}): "
                                "held-out images need each split's models (a job run with --final-fit all has nothing "
                                "held out); rerun the job with --final-fit splits, or leave out --validation")
    models = [by_split[name] for name in sorted(by_split, key=lambda n: int(n[len("split"):]))]
    missing = [m for split in models for m in split if not fs.exists(m)]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing: held-out images need each split's models; rerun the job "
                                "(it makes them again), or leave out --validation")
    return models


def on_validation_set(run: str, per_split: int, combinations: list[Combination]) -> dict[str, dict[str, float]]:
    """The table on ``per_split`` held-out training images per split, predicted once by their
    split's models into ``RUN/combine_val/``."""
    from hpa_tf.inference.runner import RunConfig
    from hpa_tf.inference.runner import run as predict

    config = _prediction_config(run)
    root = posixpath.dirname(config["data"].rstrip("/"))
    folds = pd.read_csv(_io.StringIO(fs.read_text(fs.join(run, "records", "folds.csv"))), dtype={"ID": str})
    models_of = split_models(run)
    truth = Truth.load(config["truth"], "train")
    sizes_all = {i: (int(w), int(h)) for i, w, h in zip(truth.images["ID"], truth.images["ImageWidth"],
                                                         truth.images["ImageHeight"])}
    entries, kinds, ids = {}, None, []
    for k, models in enumerate(models_of):
        held = sorted(folds.loc[folds["fold"] % len(models_of) == k, "ID"])[:per_split]
        out = fs.join(run, "combine_val", f"split{k}.csv")
        sample = fs.join(run, "combine_val", f"split{k}_sample.csv")
        fs.makedirs(posixpath.dirname(out))
        fs.write_text(sample, "ID,ImageWidth,ImageHeight,PredictionString\n"
                      + "".join(f"{i},{sizes_all[i][0]},{sizes_all[i][1]},\n" for i in held))
        predict(RunConfig(data=fs.join(root, "train"), models=models, out=out, sample_submission=sample,
                          cell_view=config["cell_view"], workers=1, overlays=0))
        kinds = _kinds(f"{out}.cache")
        entries.update(load_cached(f"{out}.cache", held, len(kinds)))
        ids += held
    chosen = Truth(truth.truth_dir, truth.images[truth.images["ID"].isin(ids)].reset_index(drop=True),
                   {i: truth.cell_labels[i] for i in ids})
    return score_table(entries, ids, {i: sizes_all[i] for i in ids}, kinds, chosen, combinations)


def markdown(table: dict[str, dict[str, float]], rows: str = "combination") -> str:
    """One row per combination (or what ``rows`` names), one column per subset of models (or rule);
    the best cell in bold."""
    columns = list(dict.fromkeys(c for row in table.values() for c in row))
    best = max(v for row in table.values() for v in row.values())
    lines = [f"| {rows} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table.items():  # "-": a rule the subset cannot give (no cell-level scores)
        cells = ["-" if c not in row else f"**{row[c]:.4f}**" if row[c] == best else f"{row[c]:.4f}" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(quick: bool = False, demo: str = "runs/demo") -> dict:
    """The benchmark registry's entry: the tables of ``runs/demo`` (``make demo`` first); the
    held-out training images' table too when the run has a model per split (``--final-fit splits``)."""
    try:
        split_models(demo)
        validation = not quick
    except FileNotFoundError:
        validation = False
    out = {"test": on_test_set(demo, COMBINATIONS[:2] if quick else COMBINATIONS)}
    if validation:
        out["validation"] = on_validation_set(demo, 64, COMBINATIONS)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_combine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/demo",
                        help="a finished job run (python -m hpa_tf.job / make demo), or any folder RUN whose "
                        "RUN/pred/submission.csv predict.py wrote with --truth (another test set)")
    parser.add_argument("--validation", type=at_least(0), default=0, metavar="N",
                        help="also score N held-out training images per split (predicted once)")
    parser.add_argument("--image-pools", action="store_true",
                        help="also the single-cell models alone with their image level pooled from their cells otherwise "
                        "than by the best cell (test set; rows: pools, columns: rules)")
    parser.add_argument("--out", help="write the tables (Markdown) and their figures (JSON) here")
    args = parser.parse_args(argv)
    if args.validation:  # first: a run it cannot take fails at once
        split_models(args.run)
    pooled = image_pool_table(args.run) if args.image_pools else None
    tables = {"test": on_test_set(args.run, COMBINATIONS)}
    if args.validation:
        tables["validation"] = on_validation_set(args.run, args.validation, COMBINATIONS)
    pools = "single-cell models' image level pooled from their cells (test)"
    if pooled is not None:
        tables[pools] = pooled
    text = "\n\n".join(f"### {name}\n\n{markdown(t, 'image level' if name == pools else 'combination')}"
                         for name, t in tables.items())
    print(text)
    if args.out:
        fs.makedirs(args.out)
        fs.write_text(fs.join(args.out, "combine.md"), text + "\n")
        fs.write_text(fs.join(args.out, "combine.json"), json.dumps(tables, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
