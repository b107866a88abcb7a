"""Training speed: hpa-tf's distributed step loop against Keras ``fit``, same model, data and batch.

The demo image model (small CNN, 128 px, global batch 16) on records of SynthHPA, on one CPU and
mirrored over two logical CPUs (the distributed code path), with 1 and 8 steps per host call.
``fit`` with several steps per call under MirroredStrategy fails (keras-team/keras#19246): reported
as such. Each figure comes from its own process (logical CPUs must be set before TensorFlow starts).

    python -m benchmarks --only training
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

CASES = [  # (name, strategy, steps per call, way)
    ("one_cpu_fit_spe1", "cpu", 1, "fit"),
    ("one_cpu_loop_spe1", "cpu", 1, "loop"),
    ("one_cpu_loop_spe8", "cpu", 8, "loop"),
    ("mirrored2_fit_spe1", "cpu_mirrored", 1, "fit"),
    ("mirrored2_fit_spe8", "cpu_mirrored", 8, "fit"),
    ("mirrored2_loop_spe1", "cpu_mirrored", 1, "loop"),
    ("mirrored2_loop_spe8", "cpu_mirrored", 8, "loop"),
]


def _measure(records: str, strategy: str, per_call: int, way: str, steps: int) -> float:
    """Training steps per second after a warm-up (runs in a fresh process)."""
    import keras

    from hpa_tf.config import load_config
    from hpa_tf.data.pipeline import distribute, make_dataset
    from hpa_tf.models import build_loss, build_model
    from hpa_tf.training.loop import Trainer
    from hpa_tf.training.strategy import configure_logical_cpus, get_strategy

    mirrored = strategy == "cpu_mirrored"
    config = load_config("configs/demo_cpu.yaml", [
        f"data.records={records}", "data.val_folds=[]", f"train.strategy={strategy}",
        f"train.batch_size={8 if mirrored else 16}", f"train.steps_per_execution={per_call}"])
    configure_logical_cpus(2 if mirrored else 0)
    keras.utils.set_random_seed(0)
    dist = get_strategy(strategy)
    if way == "loop":
        trainer = Trainer(config, dist, 10_000, 0)
        iterator = iter(distribute(dist, config, True, config.train.batch_size))
        trainer.train_steps(iterator, per_call).numpy()  # warm-up: tracing
        t = time.perf_counter()
        for _ in range(steps // per_call):
            last = trainer.train_steps(iterator, per_call)
        last.numpy()
        return steps / (time.perf_counter() - t)
    with dist.scope():
        model = build_model(config)
        model.compile(keras.optimizers.AdamW(1e-3), build_loss(config), steps_per_execution=per_call)
    ds = make_dataset(config, True, 16)
    model.fit(ds, epochs=1, steps_per_epoch=per_call, verbose=0)
    t = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps / (time.perf_counter() - t)


def run(quick: bool = False) -> dict:
    from hpa_tf.synthetic.__main__ import main as synth
    from tfrecord_builder.__main__ import main as build

    steps = 16 if quick else 64
    out: dict = {"model": "small_cnn, 128 px, global batch 16", "timed_steps": steps}
    with tempfile.TemporaryDirectory() as d:
        synth(["--out", f"{d}/synth", "--n-train", "48", "--n-test", "0", "--size", "256", "--seed", "2", "--workers", "2"])
        build(["build", "--data", f"{d}/synth/train", "--labels", f"{d}/synth/train.csv", "--out", f"{d}/records",
               "--image-size", "128", "--cell-size", "32", "--folds", "1", "--shard-mb", "1"])
        for name, strategy, per_call, way in CASES:
            cmd = [sys.executable, "-m", "benchmarks.bench_training", f"{d}/records", strategy, str(per_call), way, str(steps)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=_env())
            lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
            if res.returncode == 0 and lines:
                out[f"{name}_steps_per_s"] = json.loads(lines[-1])["steps_per_s"]
            else:
                last = (res.stderr.strip().splitlines() or ["?"])[-1]
                out[f"{name}_steps_per_s"] = f"fails: {last[:120]}"
    for scope in ("one_cpu", "mirrored2"):
        fit = out.get(f"{scope}_fit_spe1_steps_per_s")
        for per_call in (1, 8):
            loop = out.get(f"{scope}_loop_spe{per_call}_steps_per_s")
            if isinstance(fit, float) and isinstance(loop, float):
                out[f"{scope}_loop_spe{per_call}_over_fit_spe1"] = loop / fit
    return out


def _env() -> dict:
    import os

    return {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


if __name__ == "__main__":
    records, strategy, per_call, way, steps = sys.argv[1:6]
    rate = _measure(records, strategy, int(per_call), way, int(steps))
    print(json.dumps({"steps_per_s": rate}))
