"""hpa-tf installed from its wheel, outside the checkout: every command is in the package."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("hpa-tf-train", "hpa-tf-predict", "hpa-tf-job")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with hpa-tf installed from a wheel built from the checkout's files.
    Its dependencies come from the test's own environment (a .pth line: nothing is downloaded but
    the build backend), so only the wheel's content is under test."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.egg-info",
                                                             "build", "dist", ".pytest_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp / "dist").glob("hpa_tf-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                              "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


def _in(venv: Path, *cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd)})


def test_the_wheel_holds_every_command_and_config(installed, synth_dir, tmp_path):
    python = str(installed / "bin" / "python")
    where = _in(installed, python, "-c", "import hpa_tf; print(hpa_tf.__file__)", cwd=tmp_path)
    assert str(installed) in where.stdout, where.stdout + where.stderr  # the wheel's copy, not the checkout
    for command in COMMANDS:
        result = _in(installed, command, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "usage" in result.stdout, result.stderr[-2000:]
    for module in ("hpa_tf.train", "hpa_tf.predict", "hpa_tf.pseudo", "tfrecord_builder", "hpa_tf.segmentation"):
        result = _in(installed, python, "-m", module, "--help", cwd=tmp_path)
        assert result.returncode == 0, (module, result.stderr[-2000:])
    # The job checks its shipped configs before any stage: a wrong override names the key.
    result = _in(installed, "hpa-tf-job", "--data", str(synth_dir), "--run", "run", "--set", "train.epoks=1", cwd=tmp_path)
    assert result.returncode == 2 and "unknown key 'train.epoks'" in result.stderr, result.stderr


@pytest.mark.slow
def test_the_whole_job_runs_from_the_wheel(installed, synth_dir, tmp_path):
    from test_job import TINY

    result = _in(installed, "hpa-tf-job", "--data", str(synth_dir), "--run", "run", "--folds", "2", "--workers", "1",
                 "--set", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "submission.csv").exists() and (tmp_path / "run" / "results.md").exists()
