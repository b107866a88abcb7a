"""The example notebooks run, so they cannot rot: CI executes every code cell on the CPU at a tiny size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# What each notebook's tiny run prints when its work is done (a new notebook adds its lines here).
DONE = {
    "kaggle_tpu_training.ipynb": ("best epoch",),
    # the prediction notebook keeps within Kaggle's 9 hours: its run says the time budget's account
    "kaggle_predict_offline.ipynb": ("rows, in the sample submission's order", "time budget 10m00s: spent"),
}


@pytest.mark.parametrize("notebook", sorted(p.name for p in EXAMPLES.glob("*.ipynb")))
def test_notebook_runs_at_a_tiny_size(notebook, tmp_path):
    cells = json.loads((EXAMPLES / notebook).read_text())["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    script = tmp_path / "notebook.py"
    script.write_text(code)
    env = {**os.environ, "HPA_TF_NOTEBOOK_SMOKE": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for line in DONE[notebook]:
        assert line in run.stdout, run.stdout[-3000:]
