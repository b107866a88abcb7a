"""The results table of a prediction run: each model and rule alone, and the combination, scored
with the competition metric on the same test split, next to reference rows (oracles).

Reads the run's per-image cache (no model runs again), so every row uses the same cells:

    python -m hpa_tf.inference.report --pred runs/demo/pred/submission.csv --truth runs/demo/synth/truth \\
        --sample-submission runs/demo/synth/sample_submission.csv \\
        --reference "oracle image labels on the true cells=runs/demo/oracle_image_labels.json" \\
        --out runs/demo/results

writes ``results.md``, ``results.json`` and ``ap_per_class.png`` (per-class AP bars of every row).
A last, diagnostic row puts the true image labels in place of the models' image-level scores.
"""

from __future__ import annotations

import argparse
import io as _io
import json
import sys

import numpy as np

from hpa_tf import fs
from hpa_tf.cli import run
from hpa_tf.inference.cache import Entry
from hpa_tf.inference.combine import Combination, ModelScores
from hpa_tf.inference.runner import assemble, fill_sizes, image_order, load_cached
from hpa_tf.labels import CLASS_NAMES, NEGATIVE, NUM_CLASSES
from hpa_tf.metrics import evaluate
from hpa_tf.truth import Truth


KIND_ROWS = {
    "image": [("image model{s} on the whole image, {its} probabilities given to every cell", "image"),
              ("image model{s}, cell level ({view})", "cell")],
    "cells": [("cell-bag model{s}, {its} cell head", "cell"), ("cell-bag model{s}, {its} image head x {its} cell head", "image_x_cell")],
    "cell": [("single-cell model{s}, each cell alone", "cell"), ("single-cell model{s}, {its} best cell x each cell", "image_x_cell")],
}


def ablation_rows(kinds: list[str], view: str = "masked") -> list[tuple[str, list[int], str]]:
    """(row label, models used, rule) for each kind of model alone (the models of a kind together:
    out-of-fold splits are averaged), the image and cell-bag models together and the cell-bag and
    single-cell models together when a single-cell model is there too, and all models (image x cell).

    >>> [r[0] for r in ablation_rows(["image", "cells"])][-1]
    'all models, image x cell'
    >>> [r[0] for r in ablation_rows(["cells", "cell"])][-3:]
    ['single-cell model, each cell alone', 'single-cell model, its best cell x each cell', 'cell-bag and single-cell models (image x cell)']
    """
    rows = []
    by_kind: dict[str, list[int]] = {}
    for k, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(k)
    for kind, use in by_kind.items():
        plural, its = (f"s ({len(use)})", "their") if len(use) > 1 else ("", "its")
        rows += [(label.format(s=plural, its=its, view=view), use, rule) for label, rule in KIND_ROWS[kind]]
    pair = ("cell-bag and single-cell models (image x cell)", by_kind.get("cells", []) + by_kind.get("cell", []),
            "image_x_cell")
    if set(by_kind) == {"cells", "cell"}:  # every model is the pair (the cell-bag rows are those without the
        return [*rows, pair]  # single-cell model): name it as a run with image models does
    if "cell" in by_kind and len(by_kind) > 1:
        first = [k for k, kind in enumerate(kinds) if kind != "cell"]
        rows.append(("image and cell-bag models without the single-cell model (image x cell)", first, "image_x_cell"))
        if "cells" in by_kind and "image" in by_kind:
            rows.append(pair)
    rows.append(("all models, image x cell", list(range(len(kinds))), "image_x_cell"))
    return rows


KIND_NAMES = {"image": "image", "cells": "cell-bag", "cell": "single-cell"}


def submission_row(kinds: list[str], weights: list[float], combination: Combination) -> str:
    """The label of the submission's own row: its combination and the models it weighs.

    >>> submission_row(["image", "cell", "cell"], [0, 1, 1], Combination("cell"))
    '**submission**: cell, single-cell models (2)'
    """
    used = [kind for kind, w in zip(kinds, weights) if w > 0]
    if len(used) == len(kinds):
        models = "all models"
    else:
        counts = {KIND_NAMES[k]: used.count(k) for k in dict.fromkeys(used)}
        models = " and ".join(f"{name} model{'s' if n > 1 else ''} ({n})" for name, n in counts.items())
    if len({w for w in weights if w > 0}) > 1:
        models += f" (weights {' '.join(f'{w:g}' for w in weights)})"
    return f"**submission**: {combination.describe()}, {models}"


TRUE_IMAGE_ROW = "true image labels x the combination's cell scores (what a perfect image-level model would add)"


def with_true_image_labels(entries: dict[str, Entry], truth: Truth) -> dict[str, Entry]:
    """The entries with every model's image-level score replaced by the true image labels
    (Negative always allowed: any image may hold cells that express nothing).

    Scored with ``image_x_cell``, this splits the gap to the perfect row in two: what the image
    level loses (this row minus the combination) and what the cell level loses (the rest).

    >>> import pandas as pd
    >>> truth = Truth("truth", pd.DataFrame({"ID": ["a"], "labels": [[2, 16]]}), {})
    >>> scores = [ModelScores(np.full(NUM_CLASSES, 0.3), np.ones((1, NUM_CLASSES)))]
    >>> entry = with_true_image_labels({"a": (8, 8, np.array([1]), ["m"], scores)}, truth)["a"]
    >>> np.flatnonzero(entry[4][0].image).tolist(), entry[4][0].cells is scores[0].cells
    ([2, 16, 18], True)
    """
    labels = dict(zip(truth.images["ID"], truth.images["labels"]))
    out = {}
    for image_id, (w, h, cell_ids, masks, scores) in entries.items():
        known = np.zeros(NUM_CLASSES, np.float32)
        known[labels[image_id]] = 1.0
        known[NEGATIVE] = 1.0
        out[image_id] = (w, h, cell_ids, masks, [None if s is None else ModelScores(known, s.cells) for s in scores])
    return out


def _bars(results: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(14, 5 + 0.2 * len(names)))
    x = np.arange(len(CLASS_NAMES))
    colours = plt.get_cmap("tab20").colors  # tab10's colours repeat after ten rows
    for i, name in enumerate(names):
        ap = [results[name]["per_class"][c]["AP"] or 0.0 for c in CLASS_NAMES]
        ax.bar(x + i * width, ap, width, color=colours[i % len(colours)], label=f"{name[:60]} ({results[name]['mAP']:.3f})")
    ax.set_xticks(x + 0.4 - width / 2, [f"{i} {c[:14]}" for i, c in enumerate(CLASS_NAMES)], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("AP @ IoU 0.6")
    ax.set_ylim(0, 1)
    # Below the axes: inside, the legend hid the bars of the last classes.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    fs.write_bytes(path, buf.getvalue())


def report(pred: str, truth_dir: str, sample_submission: str | None, references: dict[str, str], out: str,
           split: str = "test") -> dict[str, dict]:
    """Score every ablation row of the run that wrote ``pred``; returns {row: metric dict}."""
    data = json.loads(fs.read_text(f"{pred[:-4] if pred.endswith('.csv') else pred}.summary.json"))["config"]
    cache_dir = data.get("cache") or f"{pred}.cache"  # predict.py --cache (older summaries lack it)
    key = json.loads(fs.read_text(fs.join(cache_dir, "key.json")))
    kinds = [kind for kind, _ in key["sizes"]]
    ids, sizes = image_order(data["data"], sample_submission)
    weights = data["weights"] or [1.0] * len(kinds)
    combination = Combination.parse(data.get("combine", "image_x_cell"))
    truth = Truth.load(truth_dir, split)
    results: dict[str, dict] = {}
    for label, path in references.items():
        results[label] = json.loads(fs.read_text(path))
    dropped: dict[str, tuple[str, ...]] = {}
    entries = load_cached(cache_dir, ids, len(kinds), dropped)  # read once, combined once per row
    reduced = sum(1 for pieces in dropped.values() if pieces)
    fill_sizes(data["data"], ids, entries, sizes)
    equal = [1.0] * len(kinds)  # each row's models weigh alike, whatever the submission's weights
    plain = combination == Combination("image_x_cell") and len(set(weights)) == 1
    for label, use, rule in ablation_rows(kinds, key["cell_view"]):
        if not (plain and len(use) == len(kinds) and rule == "image_x_cell"):  # else the submission's own row
            results[label] = evaluate(truth, assemble(entries, ids, sizes, rule, equal, use)).to_dict()
    results[submission_row(kinds, weights, combination)] = evaluate(
        truth, assemble(entries, ids, sizes, combination, weights)).to_dict()
    if any(s is not None and s.cells is not None for e in entries.values() for s in e[4]):
        known = with_true_image_labels(entries, truth)
        results[TRUE_IMAGE_ROW] = evaluate(truth, assemble(known, ids, sizes, "image_x_cell", weights)).to_dict()
    lines = ["| method | mAP |", "|---|---|"] + [f"| {k} | {v['mAP']:.4f} |" for k, v in results.items()]
    table = "\n".join(lines)
    fs.makedirs(out)
    fs.write_text(fs.join(out, "results.md"), f"# Results on {truth_dir} ({split}, {len(ids)} images)\n\n{table}\n\n"
                  f"Models: {', '.join(m['path'] for m in key['models'])}; segmenter {key['segmenter']}, "
                  f"TTA {key['tta']}, cell view {key['cell_view']}.\n"
                  + (f"\n{reduced} images were scored under a time budget without some of the work (the run's "
                     "summary.json lists it); a row of models a budget dropped leaves those images empty.\n"
                     if reduced else ""))
    fs.write_text(fs.join(out, "results.json"), json.dumps(results, indent=2))
    _bars(results, fs.join(out, "ap_per_class.png"))
    print(table)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpa_tf.inference.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, help="the submission CSV of a predict.py run (its cache is next to it)")
    parser.add_argument("--truth", required=True, help="SynthHPA truth folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sample-submission")
    parser.add_argument("--reference", action="append", default=[], metavar="LABEL=JSON",
                        help="a reference row from `python -m hpa_tf.metrics --json` (repeatable)")
    parser.add_argument("--out", required=True, help="folder for results.md, results.json, ap_per_class.png")
    args = parser.parse_args(argv)
    refs = {}
    for item in args.reference:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            parser.error(f"--reference {item!r}: expected LABEL=path.json")
        refs[label] = path
    report(args.pred, args.truth, args.sample_submission, refs, args.out, args.split)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
