"""What a single-cell model's training step costs at each input size: the demo's small CNN on 64 px
cells, the same on the stored 128 px cells, and ``small_cnn_s2d`` (a 2 x 2 space-to-depth stem) on
128 px cells. The real pipeline (records of 128 px cells, decoding, augmentation, resizing where the
size differs) and training loop, batch 64 on one CPU; each case in its own process.

    python -m benchmarks --only cell_models
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

CASES = [("small_cnn_64px", "small_cnn", 64), ("small_cnn_128px", "small_cnn", 128),
         ("small_cnn_s2d_128px", "small_cnn_s2d", 128)]


def _measure(records: str, backbone: str, size: int, steps: int) -> float:
    """Training steps per second after a warm-up (runs in a fresh process)."""
    import keras

    from hpa_tf.config import load_config
    from hpa_tf.data.pipeline import distribute
    from hpa_tf.training.loop import Trainer
    from hpa_tf.training.strategy import get_strategy

    config = load_config("configs/demo_cpu_cell.yaml", [f"data.records={records}", "data.val_folds=[]",
                                                        f"data.cell_size={size}", f"model.backbone={backbone}",
                                                        "data.cell_shuffle_buffer=256"])
    keras.utils.set_random_seed(0)
    strategy = get_strategy("cpu")
    trainer = Trainer(config, strategy, 10_000, 0)
    iterator = iter(distribute(strategy, config, True, config.train.batch_size))
    trainer.train_steps(iterator, 2).numpy()  # warm-up: tracing
    t = time.perf_counter()
    trainer.train_steps(iterator, steps).numpy()
    return steps / (time.perf_counter() - t)


def run(quick: bool = False) -> dict:
    from hpa_tf.synthetic.__main__ import main as synth
    from tfrecord_builder.__main__ import main as build

    steps = 8 if quick else 40
    out: dict = {"batch": 64, "timed_steps": steps}
    with tempfile.TemporaryDirectory() as d:
        synth(["--out", f"{d}/synth", "--n-train", "24", "--n-test", "0", "--size", "1024", "--seed", "2", "--workers", "2"])
        build(["build", "--data", f"{d}/synth/train", "--labels", f"{d}/synth/train.csv", "--out", f"{d}/records",
               "--image-size", "128", "--cell-size", "128", "--folds", "1", "--shard-mb", "5", "--workers", "2"])
        for name, backbone, size in CASES:
            cmd = [sys.executable, "-m", "benchmarks.bench_cell_models", f"{d}/records", backbone, str(size), str(steps)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
            out[f"{name}_steps_per_s"] = json.loads(lines[-1])["steps_per_s"] if res.returncode == 0 and lines else \\
                f"fails: {(res.stderr.strip().splitlines() or ['?'])[-1][:120]}"
    base = out.get("small_cnn_64px_steps_per_s")
    for name, _, _ in CASES[1:]:
        rate = out.get(f"{name}_steps_per_s")
        if isinstance(base, float) and isinstance(rate, float):
            out[f"{name}_step_time_over_small_cnn_64px"] = base / rate
    return out


if __name__ == "__main__":
    records, backbone, size, steps = sys.argv[1:5]
    print(json.dumps({"steps_per_s": _measure(records, backbone, int(size), int(steps))}))
