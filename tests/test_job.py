"""The main job end to end on a folder in the competition's layout (make demo DATA=DIR RUN=OUT)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.epochs=1", "train.steps_per_epoch=2", "data.image_size=32", "data.cell_size=24", "train.batch_size=2",
        "train.tensorboard=false", "data.max_eval_cells=8"]


def _job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpa_tf.job", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_the_main_job_runs_on_a_competition_folder_and_a_rerun_skips_what_is_done(synth_dir, tmp_path):
    run = tmp_path / "run"
    args = ["--data", str(synth_dir), "--run", str(run), "--folds", "2", "--splits", "2", "--workers", "1", "--set", *TINY]
    first = _job(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    sub = pd.read_csv(run / "submission.csv")
    assert sorted(sub["ID"]) == sorted(pd.read_csv(synth_dir / "sample_submission.csv")["ID"])
    assert sub["PredictionString"].fillna("").str.len().gt(0).all()
    results = (run / "results.md").read_text()
    for expected in ("default combination", "oracle image labels", "per-cell labels against the truth",
                     "naive: every cell gets its image's labels", "cell-bag models (2), their cell head",
                     "single-cell models (2), their best cell x each cell", "| **total** |"):
        assert expected in results, expected
    assert (run / "records" / "pseudo" / "round1" / "labels.npz").exists()
    for kind in ("image", "cells"):
        assert (run / "round0" / kind / "split1" / "best.keras").exists()
    assert (run / "round1" / "cell" / "split0" / "best.keras").exists()

    again = _job(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") >= 7  # 6 trainings and the labels


def test_a_folder_not_in_the_competition_layout_is_one_clear_line(tmp_path):
    (tmp_path / "train").mkdir()
    result = _job("--data", str(tmp_path), "--run", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "no train.csv" in result.stderr and "Traceback" not in result.stderr
