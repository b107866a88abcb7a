"""Shared fixtures: the real HPA samples shipped in tests/data, a tiny SynthHPA set, tiny models."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# Helper modules, not tests; they import PyTorch, which only the slow run has.
collect_ignore = ["standin_torch.py", "torch_dpn_unet.py", "data/official_segmenter/make_fixtures.py"]

SAMPLES = Path(__file__).parent / "data" / "hpa_samples"
SAMPLE_512 = SAMPLES / "hpa2018_512"
SAMPLE_512_ID = "837e738c-bba8-11e8-b2ba-ac1f6b6435d0"
SAMPLE_2048 = SAMPLES / "hpa_cellatlas_2048"
REAL_NUCLEI = Path(__file__).parent / "data" / "real_nuclei_dev"


@pytest.fixture(autouse=True)
def _op_determinism_off_after_each_test():
    """``train.deterministic`` (on in the demo configs) turns TensorFlow's op determinism on for the
    whole process; turn it off again so that no test depends on which ran before it in its worker."""
    yield
    import sys

    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config as tf_config

        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SynthHPA folder: 4 train + 4 test images of 256 px (made once per test session)."""
    from hpa_tf.synthetic.__main__ import main

    out = tmp_path_factory.mktemp("synth")
    assert main(["--out", str(out), "--n-train", "4", "--n-test", "4", "--size", "256", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two untrained .keras models: an image classifier (64 px) and a cell-bag model (32 px cells)."""
    import keras

    from hpa_tf.models import cell_bag_model, image_classifier

    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    image_classifier("small_cnn", 64).save(root / "image.keras")
    cell_bag_model("small_cnn", 32).save(root / "cells.keras")
    return [str(root / "image.keras"), str(root / "cells.keras")]


@pytest.fixture(scope="session")
def built_records(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TFRecords of the tiny SynthHPA train split: 64 px images, 32 px cells, 2 folds."""
    from tfrecord_builder.__main__ import main

    out = tmp_path_factory.mktemp("records")
    args = ["build", "--data", str(synth_dir / "train"), "--labels", str(synth_dir / "train.csv"), "--out", str(out),
            "--image-size", "64", "--cell-size", "32", "--shard-mb", "0.01", "--folds", "2"]
    assert main(args) == 0
    return out


def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A session fixture's folder built once for every xdist worker of the run (the first to take the
    lock builds it, the others wait and share it; a build that failed is started again)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def learning_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough SynthHPA to learn from on a CPU: 120 images of 256 px, records of 128 px, 5 folds
    (built once for all test workers: a minute of 2 cores)."""
    from hpa_tf.synthetic.__main__ import main as synth
    from tfrecord_builder.__main__ import main as build

    def make(root: Path) -> None:
        assert synth(["--out", str(root / "synth"), "--n-train", "120", "--n-test", "0", "--size", "256", "--seed", "5",
                      "--workers", "2"]) == 0
        assert build(["build", "--data", str(root / "synth" / "train"), "--labels", str(root / "synth" / "train.csv"),
                      "--out", str(root / "records"), "--image-size", "128", "--cell-size", "48", "--shard-mb", "2",
                      "--workers", "2"]) == 0

    return _built_once(tmp_path_factory, "learn", make) / "records"


@pytest.fixture(scope="session")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 training and 24 test SynthHPA images of 256 px: enough for a build or a prediction to be
    caught mid-way (built once for all test workers)."""
    from hpa_tf.synthetic.__main__ import main as synth

    def make(root: Path) -> None:
        assert synth(["--out", str(root), "--n-train", "40", "--n-test", "24", "--size", "256", "--seed", "9",
                      "--workers", "2"]) == 0

    return _built_once(tmp_path_factory, "many", make)
