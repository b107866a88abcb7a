"""The main job end to end on a folder in the competition's layout (make demo DATA=DIR RUN=OUT)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "train.steps_per_epoch=2", "data.image_size=32", "data.cell_size=24", "train.batch_size=2",
        "train.tensorboard=false", "data.max_eval_cells=8"]


def _job(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpa_tf.job", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def _ran(result: subprocess.CompletedProcess) -> set[str]:
    """The stages a job run ran (not skipped)."""
    return {line[3:].split(": ", 1)[0] for line in result.stdout.splitlines()
            if line.startswith("== ") and not line.endswith("done before, skipped")}


IMAGE_MODELS = {f"round 0 image model, split {k}" for k in (0, 1)}
TRAININGS = IMAGE_MODELS | {f"round 0 cell-bag model, split {k}" for k in (0, 1)}
CELL_MODELS = {f"round 1 single-cell model, split {k}" for k in (0, 1)}
LABELS = "round 1 per-cell labels, out of fold"


def test_the_main_job_runs_and_a_rerun_redoes_exactly_what_changed(synth_dir, tmp_path):
    """The job from another working directory with a relative --run; a rerun skips every stage; a
    damaged model file, a truncated label file, and another label source with the final fit on every
    image each redo exactly the stages that must be redone; with --no-image-models the image models are
    trained once the labels need them; a second round's labelling models validate once."""
    import cv2

    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(synth_dir, data)
    bad = pd.read_csv(data / "sample_submission.csv")["ID"][0]  # one test image whose channels differ in size
    green = cv2.imread(str(data / "test" / f"{bad}_green.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(data / "test" / f"{bad}_green.png"), green[: green.shape[0] // 2])
    args = ["--data", "data", "--run", "run", "--folds", "2", "--splits", "2", "--workers", "1", "--no-image-models",
            "--set", *TINY]
    first = _job(*args, "--final-fit", "splits", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    sub = pd.read_csv(run / "submission.csv")
    assert sorted(sub["ID"]) == sorted(pd.read_csv(synth_dir / "sample_submission.csv")["ID"])
    strings = sub.set_index("ID")["PredictionString"].fillna("")
    assert strings.drop(bad).str.len().gt(0).all() and strings[bad] == ""
    results = (run / "results.md").read_text()
    for expected in ("**submission**", "oracle image labels", "per-cell labels against the truth",
                     "naive: every cell gets its image's labels", "cell-bag models (2), their cell head",
                     "single-cell models (2), their best cell x each cell", "| **total** |"):
        assert expected in results, expected
    assert (run / "records" / "pseudo" / "round1" / "labels.npz").exists()
    assert (run / "round0" / "cells" / "split1" / "best.keras").exists()
    assert not (run / "round0" / "image").exists()  # --no-image-models: neither the labels nor the submission use one
    assert (run / "round1" / "cell" / "split0" / "best.keras").exists()
    # Such a run gives bench_combine held-out training images, each scored by the split that never saw it.
    from benchmarks.bench_combine import on_validation_set
    from hpa_tf.inference.combine import Combination

    held_out = on_validation_set(str(run), 1, [Combination("geometric")])
    assert 0.0 <= held_out["geometric image^0.85 x cell^0.15"]["cell"] <= 1.0
    # each split's single-cell model starts as its config says (the default --cell-init none)
    for k in (0, 1):
        assert "init_from: null" in (run / "round1" / "cell" / f"split{k}" / "config.yaml").read_text()

    again = _job(*args, "--final-fit", "splits", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not _ran(again) & (TRAININGS | CELL_MODELS | {LABELS}), _ran(again)

    model = run / "round1" / "cell" / "split0" / "best.keras"
    model.write_bytes(model.read_bytes()[:1000])  # truncated: a disk full, a killed copy
    labels = run / "records" / "pseudo" / "round1" / "labels.npz"
    labels.write_bytes(labels.read_bytes()[:100])
    redone = _job(*args, "--final-fit", "splits", cwd=tmp_path)
    assert redone.returncode == 0, redone.stderr[-3000:]
    # The labels, made again from the same models and records, are the same labels (labelling is
    # deterministic) with the same fingerprint: split 1's single-cell model trained on them stays.
    assert _ran(redone) & (TRAININGS | CELL_MODELS | {LABELS}) == {LABELS, "round 1 single-cell model, split 0"}

    # Another label source with --final-fit all (the default): the labels are made again and the last
    # round's single-cell model learns from every image's out-of-fold labels, started from split 0's
    # cell-bag model (--cell-init cells: a split's model starts from the cell-bag model of its own
    # split, the one that never saw the images it must label); no round-0 model is retrained, nor the
    # split models (the job no longer needs them), and the submission weighs that one model. The image
    # models, which the labels now come from, are trained now.
    full = _job(*args, "--label-source", "cam", "--cell-set", "augment.mixup=0.2", "--cell-init", "cells", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    config_yaml = (run / "round1" / "cell" / "all" / "config.yaml").read_text()
    assert "mixup: 0.2" in config_yaml  # that stage's alone
    assert f"init_from: {run / 'round0' / 'cells' / 'split0' / 'best.keras'}" in config_yaml
    assert "copied backbone small_cnn, class head" in full.stdout
    assert _ran(full) & (TRAININGS | CELL_MODELS | {LABELS, "round 1 single-cell model, all folds"}) == {
        LABELS, "round 1 single-cell model, all folds", *IMAGE_MODELS}
    assert '"source": "cam"' in (run / "records" / "pseudo" / "round1" / "meta.json").read_text()
    assert (run / "round1" / "cell" / "all" / "last.keras").exists()
    import json

    config = json.loads((run / "pred" / "submission.summary.json").read_text())["config"]
    assert config["models"][-1].endswith("round1/cell/all/last.keras") and config["weights"] == [0, 0, 0, 0, 1]
    assert config["combine"]["rule"] == "geometric" and config["combine"]["cell_weight"] == 0.15  # the default, recorded
    results = (run / "results.md").read_text()
    assert "single-cell model, each cell alone" in results and "trained on every fold: nothing held out" in results

    # --rounds 2: round 1 now trains one single-cell model per split (on the same round-1 labels, kept),
    # those label round 2, each split only the images it held out, and round 2's one model on every
    # image is what the submission weighs. The split models only label: the epochs --labeller-set gives
    # them, validated once, after the last.
    second = _job(*args, "--label-source", "cam", "--cell-init", "cells", "--rounds", "2", "--labeller-set",
                  "train.epochs=2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _ran(second) & (TRAININGS | CELL_MODELS | {LABELS, "round 2 per-cell labels, out of fold",
                                                      "round 2 single-cell model, all folds"}) == (
        CELL_MODELS | {"round 2 per-cell labels, out of fold", "round 2 single-cell model, all folds"})
    meta = json.loads((run / "records" / "pseudo" / "round2" / "meta.json").read_text())
    assert meta["source"] == "cell"
    assert [(s["folds"], s["models"]) for s in meta["splits"]] == [
        ([0], [str(run / "round1" / "cell" / "split0" / "best.keras")]),
        ([1], [str(run / "round1" / "cell" / "split1" / "best.keras")])]
    config = json.loads((run / "pred" / "submission.summary.json").read_text())["config"]
    assert config["models"][-1].endswith("round2/cell/all/last.keras") and config["weights"][-1] == 1
    assert sum(config["weights"]) == 1
    results = (run / "results.md").read_text()
    assert "single-cell model (previous round)" in results and "combined: the mean" not in results.split("Round 2 per-cell")[1]
    assert "later rounds' from the previous round's single-cell models of each split" in results
    assert f"| {run / 'round1' / 'cell' / 'split1'} | epoch 2/2: val AUC" in results  # the labellers' validation too
    log = pd.read_csv(run / "round1" / "cell" / "split1" / "train_log.csv")
    assert len(log) == 2 and log["val_map"].isna().tolist() == [True, False]


def test_what_the_job_can_check_is_one_line_before_any_stage(synth_dir, tmp_path, capsys):
    """A folder not in the layout, an empty test/, a wrong --set value or key: one line, no stage run.
    The command itself once (exit code, no traceback), then its main in this process (the same code
    path without a TensorFlow start per case)."""
    from hpa_tf.cli import run
    from hpa_tf.job import main

    def job(*argv):
        try:
            code = run(main, list(argv))
        except SystemExit as err:  # argparse's own errors
            code = err.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out.out, out.err)

    (tmp_path / "train").mkdir()
    result = _job("--data", str(tmp_path), "--run", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "no train.csv" in result.stderr and "Traceback" not in result.stderr

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    seen = tmp_path / "seen"  # a model trained on the run's own records: it saw every image a split holds out
    seen.mkdir()
    (seen / "config.yaml").write_text(f"data:\n  records: {tmp_path / 'bad' / 'records'}\n")
    (seen / "last.keras").write_bytes(b"")
    for bad, message in ((["--set", "train.epochs=abc"], "train.epochs must be an integer"),
                         (["--set", "train.epoks=3"], "unknown key 'train.epoks'"),
                         (["--set", "train.model_dir=/tmp/one"], "the job sets .*train.model_dir"),
                         (["--set", "data.val_folds=[]"], "the job sets .*data.val_folds"),
                         (["--rounds", "0", "--final-models", "cell"], "--final-models cell: the job trains no cell"),
                         (["--combine", "blend", "--cell-weight", "2"], "--cell-weight must be a number in"),
                         (["--combine", "cell", "--cell-weight", "0.2"], "--cell-weight applies to --combine blend or geometric"),
                         (["--set", "augment.mixup=0.2"], "augment.mixup: .*cell-bag models: --cells-config "
                          "demo_cpu_cells.*--image-set / --cell-set"),
                         (["--cell-set", "train.epoks=1"], "--cell-set train.epoks=1: unknown key 'train.epoks'.*"
                          "single-cell models: --cell-config demo_cpu_cell"),
                         (["--cells-set", "train.epochs=0"], "train.epochs: 0 must be at least 1 .*cell-bag models"),
                         (["--cell-set", "data.cell_labels=x"], "--cell-set data.cell_labels=x: the job sets"),
                         (["--labeller-set", "train.validation_freq=-1"], "--labeller-set: train.validation_freq: -1 must "
                          "be at least 0 .*single-cell models that label"),
                         (["--labeller-set", "data.val_folds=[1]"], "--labeller-set data.val_folds=\\[1\\]: the job sets"),
                         (["--cell-init", "cells", "--cell-set", "model.backbone=resnet50"],
                          r"--cell-init cells .* their backbone is resnet50 \(the single-cell models.*and the cell-bag "
                          r"models' small_cnn \(the cell-bag models: --cells-config demo_cpu_cells\): use --cell-init none, "
                          "or give both the same model.backbone"),
                         (["--cell-init", "cells", "--cell-set", "model={init_from: a.keras}"],
                          "model.init_from: a.keras not found \\(the single-cell models: --cell-config demo_cpu_cell\\)"),
                         (["--cell-init", "cells", "--cell-set", f"model.init_from={data / 'train.csv'}"],
                          "their config starts them from .*train.csv .*: use --cell-init none, or drop that"),
                         (["--cell-init", "cells", "--rounds", "0"], "--rounds 0 trains no single-cell model: use --cell-init none\n"),
                         (["--cell-set", "train={epochs: 2, model_dir: /tmp/x}"], "the job sets .*train.model_dir"),
                         (["--rounds", "2", "--cell-set", f"model.init_from={seen / 'last.keras'}"],
                          r"last.keras \(the single-cell models that label: .*\) was trained on this run's records, and it would start "
                          r"the single-cell models of every split, which label .*--cell-init cells starts each split's"),
                         (["--rounds", "2", "--labeller-set", f"model.init_from={seen / 'last.keras'}"],
                          r"last.keras \(the single-cell models that label: .*with --labeller-set\) was trained on this run's"),
                         (["--labeller-set", "model.init_from=/no/such.keras"], "model.init_from: /no/such.keras not found "
                          r"\(the single-cell models that label"),
                         (["--cells-set", f"model.init_from={seen / 'last.keras'}"],
                          r"was trained on this run's records, and it would start the cell-bag models of every split, which label the images"),
                         (["--varying-share", "0.5"], "--varying-share shape the SynthHPA the job generates; with --data")):
        result = job("--data", str(data), "--run", str(tmp_path / "bad"), *bad)
        assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
        assert "==" not in result.stdout and not (tmp_path / "bad" / "records").exists()
    # a run folder copied elsewhere: its models name the old records' path, their provenance the same records
    moved = tmp_path / "moved"
    (moved / "records").mkdir(parents=True)
    (moved / "records" / "provenance.json").write_text('{"kind": "records", "made_from": {}, "fingerprint": "ab12"}')
    (seen / "provenance.json").write_text('{"kind": "model", "made_from": {"records": "ab12"}, "fingerprint": "cd34"}')
    result = job("--data", str(data), "--run", str(moved), "--rounds", "2", "--cell-set", f"model.init_from={seen / 'last.keras'}")
    assert result.returncode == 2 and "was trained on this run's records" in result.stderr, result.stderr
    shutil.rmtree(data / "test")
    (data / "test").mkdir()
    result = job("--run", str(tmp_path / "share"), "--varying-share", "1.5")
    assert result.returncode == 2 and "--varying-share 1.5: give a share from 0 to 1" in result.stderr
    made = tmp_path / "made" / "synth"  # a run whose SynthHPA an older job made with the default options
    made.mkdir(parents=True)
    (made / "synthhpa.json").write_text('{"format": "synthhpa-1", "seed": 0, "n_train": 400, "n_test": 32, "sizes": [1024]}')
    result = job("--run", str(tmp_path / "made"), "--varying-share", "0.5")
    assert result.returncode == 2 and re.search("holds SynthHPA made with other options \\(--varying-share 1.0 there, 0.5 "
                                                "now\\): give those options to go on .*another --run, or delete .*synth", result.stderr), result.stderr
    assert "==" not in result.stdout and sorted(p.name for p in made.parent.iterdir()) == ["synth"]
    result = job("--data", str(data), "--run", str(tmp_path / "empty"))
    assert result.returncode == 2 and "test/ holds no image" in result.stderr, result.stderr
    assert "==" not in result.stdout

    # --cell-init auto: from the cell-bag models where it can, else as the config says, with the reason;
    # the default (none) starts them as their config says, without a word
    from hpa_tf.job import Job, cell_init, check_settings

    weights = tmp_path / "small_cnn.weights.h5"  # its own start (small_cnn has no ImageNet weights: refused)
    weights.write_bytes(b"")
    for cell_set, settled in (([], "cells"), (["model.backbone=resnet50"], "none"), ([f"model.weights={weights}"], "none")):
        settings = Job(str(tmp_path / "auto"), stage_sets={"cell": cell_set}, cell_init="auto")
        check_settings(settings)
        assert settings.cell_init == settled
        assert ("start as their config says" in capsys.readouterr().out) is (settled == "none")
    # flags that do nothing, or less than asked, say so
    check_settings(Job(str(tmp_path / "auto"), labeller_sets=["train.validation_freq=0", "train.epochs=3"]))
    assert "--labeller-set train.epochs=3: no model only labels with --rounds 1" in capsys.readouterr().out
    check_settings(Job(str(tmp_path / "auto"), image_models=False, final_models="round0"))
    assert "trains image models all the same, --final-models round0 uses them" in capsys.readouterr().out
    # a start from elsewhere: the labelling models' start is said, the final model's is not
    for rounds, said in ((2, True), (1, False)):
        check_settings(Job(str(tmp_path / "auto"), rounds=rounds, stage_sets={"cell": [f"model.init_from={weights}"]}))
        assert ("the single-cell models of every split start from" in capsys.readouterr().out) is said
    settings = Job(str(tmp_path / "auto"))
    check_settings(settings)
    assert settings.cell_init == "none" and "start as their config says" not in capsys.readouterr().out
    assert cell_init(settings, 1) == []
    # --cell-init cells with --final-fit splits: split k's single-cell model starts from split k's
    # cell-bag model, the one that never saw the images that split's model must label
    settings = Job(str(tmp_path / "auto"), cell_init="cells", final_fit="splits")
    check_settings(settings)
    for k in (0, 1):
        assert cell_init(settings, k) == [f"model.init_from={tmp_path / 'auto' / 'round0' / 'cells' / f'split{k}' / 'best.keras'}"]


def test_a_killed_job_takes_its_running_stage_with_it(synth_dir, tmp_path):
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "hpa_tf.job", "--data", str(synth_dir), "--run", str(tmp_path / "run"),
                             "--folds", "2", "--workers", "1", "--set", *TINY], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def training_child() -> list[int]:
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            if ppid == proc.pid and b"hpa_tf.train" in cmdline:
                found.append(int(entry))
        return found

    deadline = time.time() + 600
    while not (children := training_child()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert children, "the job never started a training"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(Path(f"/proc/{c}").exists() and " Z " not in Path(f"/proc/{c}/stat").read_text() for c in children):
        assert time.time() < deadline, "the training outlived the killed job"
        time.sleep(0.1)
