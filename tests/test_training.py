import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from tensorflow.python.framework import config as tf_config

from hpa_tf.config import ConfigError, load_config
from hpa_tf.training import train

ROOT = Path(__file__).resolve().parents[1]


def _config(records, model_dir, *extra):
    return load_config(str(ROOT / "configs" / "demo_cpu.yaml"),
                       [f"data.records={records}", f"train.model_dir={model_dir}", "data.deterministic=true", *extra])


def test_demo_model_learns_on_synthhpa(learning_records, tmp_path):
    result = train(_config(learning_records, tmp_path / "m", "train.epochs=8"))
    hist = result["history"]
    assert hist["loss"][-1] < 0.6 * hist["loss"][0]
    assert max(hist["val_auc"][-3:]) > hist["val_auc"][0] + 0.05 and max(hist["val_auc"]) > 0.6, hist["val_auc"]
    for name in ("config.yaml", "best.keras", "last.keras", "train_log.csv", "val_metrics.jsonl"):
        assert (tmp_path / "m" / name).exists(), name
    model = keras.models.load_model(tmp_path / "m" / "last.keras")
    assert model.predict(np.zeros((2, 128, 128, 4), "float32"), verbose=0).shape == (2, 19)


class _Killed(Exception):
    pass


class _KillAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Killed()


def test_a_killed_run_resumes_from_its_last_epoch(built_records, tmp_path):
    extra = ["train.epochs=3", "train.steps_per_epoch=2", "data.image_size=64", "train.batch_size=2", "data.val_fold=-1"]
    config = _config(built_records, tmp_path / "m", *extra)
    with pytest.raises(_Killed):
        train(config, [_KillAfter(1)])
    train(config)
    log = pd.read_csv(tmp_path / "m" / "train_log.csv")
    assert log["epoch"].tolist() == [0, 1, 2]  # epoch 2 ran once, after the restart
    model = keras.models.load_model(tmp_path / "m" / "last.keras")
    assert int(model.optimizer.iterations.numpy()) == 6  # the schedule continued, not restarted
    train(config)  # a finished run's folder trained again: a new run, with its own log
    assert pd.read_csv(tmp_path / "m" / "train_log.csv")["epoch"].tolist() == [0, 1, 2]


def test_a_deterministic_run_repeats_exactly(built_records, tmp_path):
    def weights(seed: int, name: str) -> np.ndarray:
        config = load_config(str(ROOT / "configs" / "demo_cpu_cells.yaml"), [
            f"data.records={built_records}", f"train.model_dir={tmp_path / name}", "data.cell_size=32",
            "data.cells_per_bag=4", "data.shuffle_buffer=8", "train.batch_size=2", "train.epochs=2",
            "train.steps_per_epoch=3", "data.val_fold=-1", "train.deterministic=true", f"train.seed={seed}"])
        train(config)
        model = keras.models.load_model(tmp_path / name / "last.keras")
        return np.concatenate([w.ravel() for w in model.get_weights()])

    first = weights(0, "a")
    assert tf_config.is_op_determinism_enabled()
    assert np.array_equal(first, weights(0, "b"))  # weights, augmentations and batch order all repeat
    assert not np.allclose(first, weights(1, "c"))  # and the seed is what picks them


def test_mirrored_strategy_on_two_logical_cpus(built_records, tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, str(ROOT / "train_tpu.py"), "--config", str(ROOT / "configs" / "demo_cpu.yaml"),
           "--set", f"data.records={built_records}", "--set", f"train.model_dir={out}", "--set", "train.strategy=cpu_mirrored",
           "--set", "train.logical_cpus=2", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2",
           "--set", "data.image_size=64", "--set", "train.batch_size=2", "--set", "data.val_fold=-1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained on 2 replica(s)" in run.stdout
    model = keras.models.load_model(out / "last.keras")
    assert model.predict(np.zeros((3, 64, 64, 4), "float32"), verbose=0).shape == (3, 19)


def test_config_typos_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_config(None, ["train.epoch=3"])
    (tmp_path / "c.yaml").write_text("model:\n  backbone: resnet50\n  widht: 3\n")
    with pytest.raises(ConfigError, match="c.yaml: unknown key 'model.widht'"):
        load_config(str(tmp_path / "c.yaml"))
