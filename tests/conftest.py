"""Shared fixtures: the real HPA samples shipped in tests/data, and a tiny SynthHPA set."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = Path(__file__).parent / "data" / "hpa_samples"
SAMPLE_512 = SAMPLES / "hpa2018_512"
SAMPLE_512_ID = "837e738c-bba8-11e8-b2ba-ac1f6b6435d0"
SAMPLE_2048 = SAMPLES / "hpa_cellatlas_2048"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SynthHPA folder: 4 train + 4 test images of 256 px (made once per test session)."""
    from hpa_tf.synthetic.__main__ import main

    out = tmp_path_factory.mktemp("synth")
    assert main(["--out", str(out), "--n-train", "4", "--n-test", "4", "--size", "256", "--seed", "3"]) == 0
    return out
