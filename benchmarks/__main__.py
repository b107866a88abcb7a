"""Run the benchmarks and write one JSON and one Markdown table.

    python -m benchmarks                      # all, full size
    python -m benchmarks --quick --only rle   # a fast look at one
    python -m benchmarks --only combine       # the combination rules on runs/demo (make demo first)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from benchmarks.common import machine

BENCHES = {
    "synthetic": "benchmarks.bench_synthetic",
    "metrics": "benchmarks.bench_metrics",
    "rle": "benchmarks.bench_rle",
    "baselines": "benchmarks.bench_baselines",
    "segmentation": "benchmarks.bench_segmentation",
    "hpacellseg": "benchmarks.bench_hpacellseg",
    "hpacellseg_networks": "benchmarks.bench_hpacellseg_networks",
    "builder": "benchmarks.bench_builder",
    "pipeline": "benchmarks.bench_pipeline",
    "training": "benchmarks.bench_training",
    "cell_models": "benchmarks.bench_cell_models",
    "predict": "benchmarks.bench_predict",
    "resize": "benchmarks.bench_resize",
    "combine": "benchmarks.bench_combine",
}
FROM_A_RUN = {"combine"}  # read a finished job run: only when --only names them


def _flatten(prefix: str, value: object) -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(f"{prefix}.{k}" if prefix else k, v)]
    return [(prefix, value)]


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a fast look")
    parser.add_argument("--out", default="runs/bench", help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    results = {"machine": machine(), "quick": args.quick, "benchmarks": {}}
    for name in args.only or [b for b in BENCHES if b not in FROM_A_RUN]:
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        res = importlib.import_module(BENCHES[name]).run(quick=args.quick)
        res["wall_s"] = time.perf_counter() - t
        results["benchmarks"][name] = res
        for key, value in _flatten("", res):
            print(f"  {key:<40} {_fmt(value)}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, TensorFlow {m.get('tensorflow', '-')}", "",
             "| benchmark | figure | value |", "|---|---|---|"]
    for name, res in results["benchmarks"].items():
        lines += [f"| {name} | {k} | {_fmt(v)} |" for k, v in _flatten("", res)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
