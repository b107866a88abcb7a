import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from hpa_tf.config import ConfigError, load_config
from hpa_tf.training import image_label_metrics, metrics_from_histograms, train
from hpa_tf.training.metrics import score_histograms

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.steps_per_epoch=2", "data.image_size=64", "train.batch_size=2", "train.tensorboard=false"]


def _config(records, model_dir, *extra):
    return load_config(str(ROOT / "configs" / "demo_cpu.yaml"),
                       [f"data.records={records}", f"train.model_dir={model_dir}", "data.deterministic=true", *extra])


def _weights(path) -> np.ndarray:
    return np.concatenate([w.ravel() for w in keras.models.load_model(path).get_weights()])


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_tpu.py"), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, **kwargs)


def test_demo_model_learns_on_synthhpa(learning_records, tmp_path):
    result = train(_config(learning_records, tmp_path / "m", "train.epochs=8"))
    hist = result["history"]
    assert hist["loss"][-1] < 0.6 * hist["loss"][0]
    assert max(hist["val_auc"][-3:]) > hist["val_auc"][0] + 0.05 and max(hist["val_auc"]) > 0.6, hist["val_auc"]
    for name in ("config.yaml", "best.keras", "best.json", "last.keras", "train_log.csv", "val_metrics.jsonl"):
        assert (tmp_path / "m" / name).exists(), name
    assert not list((tmp_path / "m" / "backup").glob("*.npz"))  # a finished run leaves no backups behind
    best = json.loads((tmp_path / "m" / "best.json").read_text())
    assert best["epoch"] == int(np.argmax(hist["val_map"]))
    model = keras.models.load_model(tmp_path / "m" / "last.keras")
    assert model.predict(np.zeros((2, 128, 128, 4), "float32"), verbose=0).shape == (2, 19)


class _Killed(Exception):
    pass


def _kill_after(epoch: int):
    def hook(e, row):
        if e == epoch:
            raise _Killed()
    return hook


def test_a_killed_run_resumes_to_the_uninterrupted_run_bit_for_bit(built_records, tmp_path):
    """Resume after a kill: the same weights, logs and best epoch as a run never killed (with weight
    averaging, whose averages are part of the backups, and mixup, seeded by the epoch)."""
    extra = ["train.epochs=4", *SMALL, "train.deterministic=true", "data.val_fold=1", "train.learning_rate=0.02",
             "train.ema=0.9", "augment.mixup=0.4"]
    train(_config(built_records, tmp_path / "whole", *extra))
    config = _config(built_records, tmp_path / "m", *extra)
    with pytest.raises(_Killed):
        train(config, [_kill_after(1)])
    assert (tmp_path / "m" / "backup" / "epoch-00001.npz").exists()
    train(config)
    log, whole = pd.read_csv(tmp_path / "m" / "train_log.csv"), pd.read_csv(tmp_path / "whole" / "train_log.csv")
    assert log["epoch"].tolist() == [0, 1, 2, 3]  # epochs 2 and 3 ran once, after the restart
    assert np.array_equal(log["loss"], whole["loss"]) and np.array_equal(log["val_map"], whole["val_map"])
    assert np.array_equal(_weights(tmp_path / "m" / "last.keras"), _weights(tmp_path / "whole" / "last.keras"))
    best = json.loads((tmp_path / "m" / "best.json").read_text())["epoch"]
    assert best == int(np.argmax(whole["val_map"]))  # across the kill
    assert np.array_equal(_weights(tmp_path / "m" / "best.keras"), _weights(tmp_path / "whole" / "best.keras"))
    train(config)  # a finished run's folder trained again: a new run, with its own log
    assert pd.read_csv(tmp_path / "m" / "train_log.csv")["epoch"].tolist() == [0, 1, 2, 3]

    # Killed between the last epoch's backup and its logs: the restart trains nothing and writes them.
    last = _config(built_records, tmp_path / "last", *extra)
    with pytest.raises(_Killed):
        train(last, [_kill_after(3)])
    for name, keep in (("train_log.csv", 4), ("val_metrics.jsonl", 3)):  # csv: the header and 3 epochs
        path = tmp_path / "last" / name
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))
    train(last)
    assert pd.read_csv(tmp_path / "last" / "train_log.csv").drop(columns="seconds").equals(whole.drop(columns="seconds"))
    assert len((tmp_path / "last" / "val_metrics.jsonl").read_text().splitlines()) == 4


def test_weight_averaging_is_the_moving_average_and_gives_the_training_weights_back(built_records):
    """train.ema: inside ``averaged()`` the model holds the exponential moving average of its
    weights after each step (started at the first step's), and the training weights afterwards."""
    from hpa_tf.training.loop import Trainer

    config = load_config(str(ROOT / "configs" / "demo_cpu.yaml"), [f"data.records={built_records}", "data.image_size=32",
                                                                   "train.ema=0.5", "train.learning_rate=0.05"])
    trainer = Trainer(config, tf.distribute.get_strategy(), total_steps=4, warmup_steps=0)
    rng = np.random.default_rng(0)
    batches = iter(tf.data.Dataset.from_tensor_slices((rng.uniform(0, 1, (16, 32, 32, 4)).astype("float32"),
                                                       (rng.uniform(0, 1, (16, 19)) < 0.2).astype("float32"))).batch(4))
    weights = []
    for _ in range(4):
        trainer.train_steps(batches, 1)
        weights.append([v.numpy() for v in trainer.model.trainable_variables])
    expected = weights[0]
    for step in weights[1:]:
        expected = [0.5 * a + 0.5 * b for a, b in zip(expected, step)]
    with trainer.averaged() as model:
        assert all(np.allclose(v.numpy(), e, atol=1e-6) for v, e in zip(model.trainable_variables, expected))
        assert not all(np.allclose(v.numpy(), w) for v, w in zip(model.trainable_variables, weights[-1]))
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(trainer.model.trainable_variables, weights[-1]))
    with pytest.raises(ConfigError, match="train.ema"):
        load_config(None, ["train.ema=1"])


def test_a_setting_switched_off_is_not_part_of_what_a_model_is_made_from(built_records, tmp_path, capsys):
    """Upgrading hpa-tf: free rotation, mixup and EMA at their off values are left out of a model's
    provenance, so a model recorded with them listed (as hpa-tf did when each was added), or before they
    existed, is still current; one recorded with a setting switched on is not."""
    from hpa_tf import provenance
    from hpa_tf.training.folder import TrainingFolder, model_made_from

    config = _config(built_records, tmp_path / "m")
    folder = TrainingFolder(str(tmp_path / "m"))
    folder.finish(model_made_from(config))
    record = json.loads((tmp_path / "m" / provenance.FILE).read_text())
    assert not {"rotate", "mixup"} & set(record["made_from"]["settings"]["augment"])

    def recorded_with(**augment):
        made_from = json.loads(json.dumps(record["made_from"]))
        made_from["settings"]["augment"].update(augment)
        provenance.write(str(tmp_path / "m"), "model", made_from)

    recorded_with(rotate=0.0, mixup=0.0)
    assert folder.is_current(config)
    recorded_with(rotate=30.0)
    assert not folder.is_current(config) and "augment.rotate" in capsys.readouterr().out
    # A record edited by hand (its settings no longer give its fingerprint) is current for nothing.
    recorded_with(rotate=0.0)
    edited = json.loads((tmp_path / "m" / provenance.FILE).read_text())
    edited["made_from"]["settings"]["train"]["epochs"] = 99
    (tmp_path / "m" / provenance.FILE).write_text(json.dumps(edited))
    assert not folder.is_current(_config(built_records, tmp_path / "m", "train.epochs=99"))
    assert "does not match its own fingerprint" in capsys.readouterr().out
    assert not folder.is_current(_config(built_records, tmp_path / "m", "augment.mixup=0.2"))


def test_a_truncated_backup_is_set_aside_and_the_one_before_used(built_records, tmp_path, capsys):
    config = _config(built_records, tmp_path / "m", "train.epochs=3", *SMALL, "data.val_fold=-1")
    with pytest.raises(_Killed):
        train(config, [_kill_after(1)])
    newest = tmp_path / "m" / "backup" / "epoch-00001.npz"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # the disk filled up mid-write
    train(config)
    out = capsys.readouterr().out
    assert f"backup {newest} cannot be read" in out
    assert f"after epoch 1 of 3 (from {tmp_path / 'm' / 'backup' / 'epoch-00000.npz'}" in out  # the file it resumes from
    assert (tmp_path / "m" / "backup" / "epoch-00001.npz.corrupt").exists()
    assert pd.read_csv(tmp_path / "m" / "train_log.csv")["epoch"].tolist() == [0, 1, 2]  # epoch 1 trained again


def test_a_full_disk_is_one_clear_line_and_the_rerun_trains(built_records, tmp_path):
    args = ["--config", str(ROOT / "configs" / "demo_cpu.yaml"), "--set", f"data.records={built_records}",
            f"train.model_dir={tmp_path / 'm'}", "train.epochs=2", *SMALL, "data.val_fold=-1"]

    def small_disk():  # files above 1 MB cannot be written: the backup (about 4 MB) fails as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    run = _run(args, preexec_fn=small_disk)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"cannot write the backup of epoch 0 to {tmp_path / 'm' / 'backup'}" in run.stderr
    assert "Traceback" not in run.stderr and not list((tmp_path / "m" / "backup").iterdir())  # no half file left
    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "m" / "last.keras").exists()


def test_a_deterministic_run_repeats_exactly(built_records, tmp_path):
    def weights(seed: int, name: str) -> np.ndarray:
        config = load_config(str(ROOT / "configs" / "demo_cpu_cells.yaml"), [
            f"data.records={built_records}", f"train.model_dir={tmp_path / name}", "data.cell_size=32",
            "data.cells_per_bag=4", "data.shuffle_buffer=8", "train.batch_size=2", "train.epochs=2",
            "train.steps_per_epoch=3", "data.val_fold=-1", "train.deterministic=true", f"train.seed={seed}"])
        train(config)
        return _weights(tmp_path / name / "last.keras")

    first = weights(0, "a")
    assert tf_config.is_op_determinism_enabled()
    assert np.array_equal(first, weights(0, "b"))  # weights, augmentations and batch order all repeat
    assert not np.allclose(first, weights(1, "c"))  # and the seed is what picks them


@pytest.mark.parametrize("config_name, extra", [
    ("demo_cpu.yaml", ["data.image_size=64"]),
    ("demo_cpu_cells.yaml", ["data.cell_size=32", "data.cells_per_bag=4", "data.max_eval_cells=8"]),
    ("demo_cpu_cell.yaml", ["data.cell_size=32", "data.max_eval_cells=8"]),
    ("demo_cpu.yaml", ["data.image_size=64", "model.puzzle_tiles=2"]),
])
def test_xla_compiles_the_train_and_validation_steps(built_records, tmp_path, config_name, extra):
    from hpa_tf.training.train import train as run_training

    config = load_config(str(ROOT / "configs" / config_name), [
        f"data.records={built_records}", f"train.model_dir={tmp_path / 'm'}", "train.jit_compile=true",
        "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=2", "train.steps_per_execution=2",
        "train.tensorboard=false", *extra])
    result = run_training(config)
    assert np.isfinite(result["history"]["loss"][0]) and np.isfinite(result["history"]["val_map"][0])


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_trains_and_loads_back_in_float32(built_records, tmp_path, precision):
    from hpa_tf.models import load_model

    result = train(_config(built_records, tmp_path / "m", "train.epochs=1", *SMALL, f"train.mixed_precision={precision}"))
    assert np.isfinite(result["history"]["loss"][0])  # float16 goes through loss scaling
    model = load_model(str(tmp_path / "m" / "last.keras"))
    assert {layer.compute_dtype for layer in model._flatten_layers()} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # train() leaves the global policy as it was


@pytest.mark.parametrize("config_name, extra, input_shape", [
    ("demo_cpu.yaml", ["data.image_size=64"], (3, 64, 64, 4)),
    pytest.param("demo_cpu.yaml", ["data.image_size=64", "model.puzzle_tiles=2"], (3, 64, 64, 4),
                 marks=pytest.mark.slow),  # 55 s; Puzzle-CAM trains by default in test_pseudo
    ("demo_cpu_cell.yaml", ["data.cell_size=32", "data.max_eval_cells=8"], (3, 32, 32, 4)),
])
def test_mirrored_on_two_logical_cpus_with_several_steps_per_call(built_records, tmp_path, config_name, extra, input_shape):
    out = tmp_path / "m"
    run = _run(["--config", str(ROOT / "configs" / config_name), "--set", f"data.records={built_records}",
                f"train.model_dir={out}", "train.strategy=cpu_mirrored", "train.logical_cpus=2", "train.epochs=1",
                "train.steps_per_execution=4", "train.steps_per_epoch=6", "train.batch_size=2", "train.tensorboard=false",
                *extra])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "trained on 2 replica(s)" in run.stdout
    model = keras.models.load_model(out / "last.keras")
    assert model.predict(np.zeros(input_shape, "float32"), verbose=0).shape == (3, 19)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow  # 90 s; the mirrored tests on two logical CPUs run by default
def test_two_workers_on_localhost_follow_one_process_and_resume(built_records, tmp_path):
    """MultiWorkerMirroredStrategy over two processes (TF_CONFIG) against MirroredStrategy on two
    logical CPUs, same global batch. Their batches differ (each worker reads half of the shards), so
    the losses agree to a tolerance: within 0.08 per epoch on this data, a tenth of the first loss."""
    common = [f"data.records={built_records}", "data.image_size=64", "train.batch_size=2", "train.epochs=3",
              "train.steps_per_epoch=8", "train.steps_per_execution=4", "data.val_fold=-1", "data.deterministic=true",
              "train.tensorboard=false", "augment.p_negative=0", "augment.p_swap=0"]
    config = ["--config", str(ROOT / "configs" / "demo_cpu.yaml")]
    single = _run([*config, "--set", *common, f"train.model_dir={tmp_path / 'one'}", "train.strategy=cpu_mirrored",
                   "train.logical_cpus=2"])
    assert single.returncode == 0, single.stderr[-2000:]

    def start(model_dir, ports):
        procs = []
        for i in range(2):
            tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": i}}
            cmd = [sys.executable, str(ROOT / "train_tpu.py"), *config, "--set", *common,
                   f"train.model_dir={model_dir}", "train.strategy=multi_worker"]
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CONFIG": json.dumps(tf_config)}
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return procs

    two = tmp_path / "two"
    procs = start(two, _free_ports(2))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    one_loss = pd.read_csv(tmp_path / "one" / "train_log.csv")["loss"].to_numpy()
    two_loss = pd.read_csv(two / "train_log.csv")["loss"].to_numpy()
    assert np.abs(one_loss - two_loss).max() < 0.08, (one_loss, two_loss)
    assert two_loss[-1] < two_loss[0]

    # Kill one worker after the first epoch's backup, then the other (it waits on the dead one); restart both.
    killed = tmp_path / "killed"
    procs = start(killed, _free_ports(2))
    deadline = time.time() + 300
    while not (killed / "backup" / "epoch-00000.npz").exists() and time.time() < deadline:
        time.sleep(0.05)
    procs[1].kill()
    procs[0].kill()
    for p in procs:
        p.communicate()
    assert (killed / "backup" / "epoch-00000.npz").exists() and not (killed / "last.keras").exists()
    procs = start(killed, _free_ports(2))
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:]
    assert "resuming" in outs[0][0]
    assert pd.read_csv(killed / "train_log.csv")["epoch"].tolist() == [0, 1, 2]


def test_validation_metrics_in_the_graph_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = (rng.random((2000, 19)) < np.linspace(0.02, 0.5, 19)).astype("float32")
    logits = rng.normal(-2.0, 3.0, y.shape) + 6.0 * y * rng.random(y.shape)
    p = (1 / (1 + np.exp(-logits))).astype("float32")
    valid = np.ones(2100, "float32")
    valid[2000:] = 0.0  # padding counts nowhere
    hist = score_histograms(tf.constant(np.concatenate([p, np.full((100, 19), 0.9, "float32")])),
                            tf.constant(np.concatenate([y, np.ones((100, 19), "float32")])), tf.constant(valid))
    ours, exact = metrics_from_histograms(hist.numpy()), image_label_metrics(y, p)
    for key in ("auc", "ap", "f1"):
        worst = max(abs(ours["per_class"][c][key] - exact["per_class"][c][key]) for c in exact["per_class"])
        assert worst < (1e-9 if key == "f1" else 2e-3), (key, worst)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        load_config(None, ["train.epoch=3"])
    (tmp_path / "c.yaml").write_text("model:\n  backbone: resnet50\n  widht: 3\n")
    with pytest.raises(ConfigError, match="c.yaml: unknown key 'model.widht'"):
        load_config(str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match="train.batch_size must be an integer, got 'abc'"):
        load_config(None, ["train.batch_size=abc"])
    with pytest.raises(ConfigError, match="train.batch_size: 0 must be at least 1"):
        load_config(None, ["train.batch_size=0"])
    with pytest.raises(ConfigError, match="model.weights imagenet: small_cnn has no ImageNet weights"):
        load_config(None, ["model.weights=imagenet"])  # before a training fails on it
    with pytest.raises(ConfigError, match="data.kind=cells disagrees with model.kind=image"):
        load_config(None, ["data.kind=cells"])
    assert load_config(None, ["model.kind=cells"]).data.kind == "cells"  # data.kind follows by default
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0
    assert load_config(None, ["train.learning_rate=3e-4"]).train.learning_rate == 3e-4  # a string to YAML 1.1
    for bad in ("train.learning_rate=.nan", "train.weight_decay=.nan", "augment.mixup=.inf"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
    assert load_config(None, ["train.mixed_precision=off"]).train.mixed_precision == "off"  # not YAML's False
    # data.val_fold, the older name: one fold, -1 for none, or a list
    assert [load_config(None, [f"data.val_fold={v}"]).data.val_folds for v in (2, -1, "[0, 3]")] == [[2], [], [0, 3]]
    with pytest.raises(ConfigError, match="data.val_folds"):
        load_config(None, ["data.val_folds=[1, 1]"])
