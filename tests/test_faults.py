"""Faults and bad inputs, tried as a user meets them: kill -9, two runs on one folder, damaged files,
a full disk (in test_training), and mistakes that must be one clear line, never a traceback."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import hpa_tf.models  # noqa: F401  (registers the custom layers keras.models.load_model meets)
from hpa_tf.cli import run
from hpa_tf.submission import read_submission
from tfrecord_builder.__main__ import main as builder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (zombies excluded)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _wait_for(condition, seconds: float = 300.0) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise TimeoutError("the condition never came true")
        time.sleep(0.05)


def _gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]
                   for p in pids):
            return True
        time.sleep(0.1)
    return False


def _build_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tfrecord_builder", "build", "--data", str(data / "train"), "--labels",
            str(data / "train.csv"), "--out", str(out), "--image-size", "64", "--cell-size", "32", "--shard-mb", "0.02",
            "--folds", "2", *extra]


def test_two_builders_on_one_folder_cannot_mix(many_images, tmp_path):
    out = tmp_path / "records"
    procs = [subprocess.Popen(_build_cmd(many_images, out, "--cell-size", size), env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for size in ("24", "32")]
    results = [(p.wait(timeout=600), p.communicate()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-800:] for _, (_, err) in results]
    loser = next(err for code, (_, err) in results if code == 2)
    assert "is in use by tfrecord_builder build" in loser or "holds a build of another config" in loser
    assert "Traceback" not in loser
    manifest = json.loads((out / "manifest.json").read_text())
    import tensorflow as tf

    from hpa_tf.data.schema import parse_cell_record

    sizes = {tf.io.decode_png(c).shape[0] for f in manifest["shards"]["cells"]
             for r in tf.data.TFRecordDataset(str(out / f["file"])).map(parse_cell_record) for c in r["cells"][:1]}
    assert sizes == {manifest["config"]["cell_size"]}  # the manifest describes exactly what is there
    assert manifest["counts"]["images"] == 40


def test_a_builder_killed_hard_frees_its_folder_and_its_workers(many_images, tmp_path):
    out = tmp_path / "records"
    proc = subprocess.Popen(_build_cmd(many_images, out, "--workers", "2"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for(lambda: (out / "_meta").exists() and any((out / "_meta").glob("*.json")))
    workers = _children(proc.pid)
    assert workers, "the build should run worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone(workers), "worker processes outlived the killed builder"
    assert (out / ".hpa-tf.lock").exists()  # left behind by kill -9 ...
    again = subprocess.run(_build_cmd(many_images, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]  # ... and taken over: its owner is gone
    assert "already complete" in again.stdout and json.loads((out / "manifest.json").read_text())["counts"]["images"] == 40


def test_a_damaged_shard_is_found_named_and_rebuilt(built_records, synth_dir, tmp_path, capsys):
    from tfrecord_builder.inspect import inspect

    out = tmp_path / "copy"
    shutil.copytree(built_records, out)
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / manifest["shards"]["images"][1]["file"]
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 2])  # truncated on disk
    with pytest.raises(ValueError, match=f"{shard.name} is {len(original) // 2} bytes, its metadata says {len(original)}"):
        inspect(str(out))
    from hpa_tf.config import load_config
    from hpa_tf.data.pipeline import make_dataset

    with pytest.raises(ValueError, match=f"{shard.name} is .* bytes.*rebuilds broken shards"):
        make_dataset(load_config(None, [f"data.records={out}", "data.image_size=32"]), True, 2)  # named at the start
    args = ["build", "--data", str(synth_dir / "train"), "--labels", str(synth_dir / "train.csv"), "--out", str(out),
            "--image-size", "64", "--cell-size", "32", "--shard-mb", "0.01", "--folds", "2"]
    assert builder(args) == 0
    assert f"shard 1: {shard} is" in capsys.readouterr().out and shard.read_bytes() == original
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF  # the same size, other bytes: only a checksum tells
    shard.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="another sha256"):
        inspect(str(out), verify=True)
    assert builder([*args, "--verify"]) == 0 and shard.read_bytes() == original


def test_folds_are_assigned_over_the_images_that_were_built(many_images, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(many_images / "train", data)
    table = pd.read_csv(many_images / "train.csv", dtype=str)
    broken = table["ID"][:24].tolist()
    for image_id in broken:  # most images fail: with folds fixed up front whole folds could end empty
        (data / f"{image_id}_blue.png").write_bytes(b"not a png")
    out = tmp_path / "records"
    assert builder(["build", "--data", str(data), "--labels", str(many_images / "train.csv"), "--out", str(out),
                    "--image-size", "32", "--cell-size", "16", "--shard-mb", "0.01", "--folds", "5"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    folds = pd.read_csv(out / "folds.csv")
    assert set(folds["ID"]) == set(table["ID"]) - set(broken)
    assert manifest["folds"]["images_per_fold"] == {str(k): 3 + (k < 1) for k in range(5)}  # 16 images in 5 folds
    assert len(pd.read_csv(out / "errors.csv")) == 24


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from hpa_tf.models import image_classifier

    path = tmp_path_factory.mktemp("model") / "image.keras"
    keras.utils.set_random_seed(0)
    image_classifier("small_cnn", 64).save(path)
    return path


def _predict(data: Path, model: Path, out: Path, *extra: str) -> int:
    from predict import main

    return run(main, ["--data", str(data), "--models", str(model), "--out", str(out), "--workers", "0",
                      "--overlays", "0", *extra])


def test_every_image_gets_a_valid_row_and_an_error_line(many_images, tiny_model, tmp_path):
    data = tmp_path / "test"
    data.mkdir()
    ids = sorted({p.name.rsplit("_", 1)[0] for p in (many_images / "test").glob("*.png")})[:3]
    for image_id in ids:
        for p in (many_images / "test").glob(f"{image_id}_*.png"):
            shutil.copy(p, data)
    (data / f"{ids[1]}_yellow.png").unlink()  # a missing channel
    for c in ("red", "green", "blue", "yellow"):  # every channel truncated: only the headers are left
        path = data / f"{ids[2]}_{c}.png"
        path.write_bytes(path.read_bytes()[:200])
    out = tmp_path / "sub.csv"
    assert _predict(data, tiny_model, out) == 0
    rows = {r.image_id: r for r in read_submission(str(out))}  # valid for hpa-tf's own reader
    assert set(rows) == set(ids) and all((r.width, r.height) == (256, 256) for r in rows.values())
    assert rows[ids[0]].masks and not rows[ids[1]].masks and not rows[ids[2]].masks
    errors = pd.read_csv(tmp_path / "sub.errors.csv")
    assert set(errors["ID"]) == {ids[1], ids[2]} and "no yellow channel" in errors.to_string()


def test_a_corrupt_cache_file_is_named_dropped_and_recomputed(many_images, tiny_model, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    data = many_images / "test"
    assert _predict(data, tiny_model, out) == 0
    first = out.read_text()
    victim = sorted((tmp_path / "sub.csv.cache").glob("*.npz"))[3]
    victim.write_bytes(victim.read_bytes()[:100])
    assert _predict(data, tiny_model, out) == 0
    assert f"cache file {victim} cannot be read" in capsys.readouterr().out
    assert out.read_text() == first
    # the same IDs in another folder (two SynthHPA sets of one seed): its scores are not these
    other = tmp_path / "other"
    shutil.copytree(data, other)
    assert _predict(other, tiny_model, out) == 2
    assert re.search(r"holds scores of another run \(differs in \['data'\].*--overwrite", capsys.readouterr().err)


def test_workers_die_with_a_killed_predict(many_images, tiny_model, tmp_path):
    out = tmp_path / "sub.csv"
    cmd = [sys.executable, str(ROOT / "predict.py"), "--data", str(many_images / "test"), "--models", str(tiny_model),
           "--out", str(out), "--workers", "1", "--overlays", "0"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = tmp_path / "sub.csv.cache"
    _wait_for(lambda: cache.exists() and any(cache.glob("*.npz")))
    workers = _children(proc.pid)
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone(workers), "a prediction worker outlived the killed predict.py"


@pytest.mark.slow  # 90 s; test_training.py::test_a_killed_run_resumes_to_the_uninterrupted_run_bit_for_bit runs by default
def test_kill_9_in_training_resumes_to_the_uninterrupted_run(built_records, tmp_path):
    def cmd(model_dir):
        return [sys.executable, str(ROOT / "train_tpu.py"), "--config", "demo_cpu", "--set", f"data.records={built_records}",
                f"train.model_dir={model_dir}", "train.epochs=5", "train.steps_per_epoch=3", "data.image_size=64",
                "train.batch_size=2", "data.val_fold=1", "train.deterministic=true", "data.deterministic=true",
                "train.tensorboard=false"]

    whole = subprocess.run(cmd(tmp_path / "whole"), env=ENV, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (killed / "backup" / "epoch-00001.npz").exists())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(cmd(killed), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming" in again.stdout, again.stderr[-2000:]
    for name in ("last.keras", "best.keras"):
        a, b = (keras.models.load_model(d / name).get_weights() for d in (tmp_path / "whole", killed))
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), name
    assert (killed / "best.json").read_text() == (tmp_path / "whole" / "best.json").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(killed / "train_log.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "whole" / "train_log.csv").drop(columns="seconds"))

    # Another setting in the finished run's folder, killed after its first epoch: the folder must not
    # look like a finished run of either setting; restarted with a third setting it starts anew (its
    # backups are of another run), and its config.yaml holds out the folds it really held out.
    from hpa_tf.config import load_config
    from hpa_tf.training.folder import TrainingFolder

    def config_of(argv):
        return load_config("demo_cpu", argv[argv.index("--set") + 1:])

    other = [*cmd(killed), "data.val_fold=0"]
    proc = subprocess.Popen(other, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: (killed / "backup" / "epoch-00000.npz").exists())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    folder = TrainingFolder(str(killed))
    assert not folder.is_current(config_of(cmd(killed))) and not folder.is_current(config_of(other))
    assert not (killed / "last.keras").exists()
    third = [*cmd(killed), "train.epochs=2"]
    restarted = subprocess.run(third, env=ENV, capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0 and "starting anew" in restarted.stdout, restarted.stdout + restarted.stderr[-2000:]
    assert "data.val_fold" in restarted.stdout and "resuming" not in restarted.stdout
    assert pd.read_csv(killed / "train_log.csv")["epoch"].tolist() == [0, 1]
    assert folder.held_out() == ((1,), ()) and folder.is_current(config_of(third))


def _cli(module_main, argv, capsys) -> tuple[int, str]:
    code = run(module_main, argv)
    return code, capsys.readouterr().err


def test_mistakes_are_one_line_and_a_nonzero_exit(synth_dir, built_records, tiny_model, tmp_path, capsys):
    from hpa_tf.metrics import main as metrics
    from hpa_tf.segmentation.__main__ import main as segment
    from predict import main as predict
    from hpa_tf.train import main as train_main

    train = str(synth_dir / "train")
    bad_label = tmp_path / "bad.csv"
    bad_label.write_text("ID,Label\nabc,0|42\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [\n")
    cases = [
        (builder, ["build", "--data", train, "--labels", str(bad_label), "--out", str(tmp_path / "o1")], "label 42"),
        (builder, ["build", "--data", train, "--labels", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o2")],
         "--labels .*nope.csv: no such file"),
        (builder, ["build", "--data", train, "--labels", str(synth_dir / "train.csv"), "--out", str(a_file / "sub")],
         "--out .*a_file/sub: cannot write there"),
        (builder, ["build", "--data", str(tmp_path / "nowhere"), "--labels", str(synth_dir / "train.csv"), "--out",
                   str(tmp_path / "o3")], "--data .*nowhere: no such folder"),
        (builder, ["build", "--data", str(synth_dir / "test"), "--labels", str(synth_dir / "train.csv"), "--out",
                   str(tmp_path / "o4")], "none of the first 4 images of .*train.csv has a file"),
        (train_main, ["--config", "demo_cpu", "--set", "train.batch_size=abc"], "train.batch_size must be an integer"),
        (train_main, ["--config", "demo_cpu", "--set", "train.batch_size=0"], "train.batch_size: 0 must be at least 1"),
        (train_main, ["--config", "demo_cpu_cells", "--set", "model.kind=image"], "data.kind=cells disagrees"),
        (train_main, ["--config", "demo_cpu", "--set", f"data.records={tmp_path / 'none'}"], "manifest.json not found"),
        (train_main, ["--config", "demo_cpu", "--set", f"data.records={built_records}", "data.val_fold=7",
                      f"train.model_dir={tmp_path / 'm'}"], r"validation folds \[7\] hold no images \(the records have folds 0, 1\)"),
        (predict, ["--data", str(tmp_path / "nowhere"), "--models", str(tiny_model), "--out", str(tmp_path / "s.csv")],
         "--data .*nowhere: no such folder"),
        (predict, ["--data", str(synth_dir / "test"), "--models", str(tmp_path / "none.keras"), "--out",
                   str(tmp_path / "s.csv")], "model .*none.keras not found"),
        (segment, ["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "masks")], "no such folder"),
        (segment, ["--data", str(synth_dir / "test"), "--out", str(tmp_path / "m2"), "--option", "nonsense=3"],
         "segmenter 'classical' has no option nonsense"),
        (predict, ["--data", str(synth_dir / "test"), "--models", str(tiny_model), "--out", str(tmp_path / "s.csv"),
                   "--segmenter", "foo"], "unknown segmenter 'foo'"),
        (builder, ["build", "--data", train, "--labels", str(synth_dir / "train.csv"), "--out", str(tmp_path / "o5"),
                   "--segmenter", f"precomputed:{tmp_path / 'nomasks'}"], "no such folder .*nomasks"),
        (train_main, ["--config", str(bad_yaml)], "not valid YAML at line 2"),
        (predict, ["--data", str(synth_dir / "test"), "--models", str(tiny_model), "--out", str(tmp_path / "s.csv"),
                   "--sample-submission", str(tmp_path / "none.csv")], "none.csv: no such file"),
        (metrics, ["--truth", str(tmp_path / "nowhere"), "--submission", str(tmp_path / "s.csv")], "nowhere"),
    ]
    for main, argv, message in cases:
        if main is builder:
            argv = [*argv, "--folds", "2"]
        code, err = _cli(main, argv, capsys)
        assert code == 2, (argv, err)
        assert "Traceback" not in err and err.startswith("error"), (argv, err)
        assert re.search(message, err), (argv, message, err)
    # the non-existent --data above wrote nothing that refuses the corrected command
    assert builder(["build", "--data", train, "--labels", str(synth_dir / "train.csv"), "--out", str(tmp_path / "o3"),
                    "--image-size", "32", "--cell-size", "16", "--shard-mb", "0.01", "--folds", "2"]) == 0
    end_to_end = subprocess.run([sys.executable, str(ROOT / "train_tpu.py"), "--config", "demo_cpu", "--set",
                                 "train.epochs=zero"], env=ENV, capture_output=True, text=True, timeout=300)
    assert end_to_end.returncode == 2 and "Traceback" not in end_to_end.stderr
    assert "train.epochs must be an integer" in end_to_end.stderr
