# The two commands of the README, and a few helpers. Each target installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
RUN ?= runs/demo
WORKERS ?= 2
N_TRAIN ?= 400
N_TEST ?= 32
TRAIN_SET ?=
DATA ?=
WHEELHOUSE ?= wheelhouse
KAGGLE_PYTHON ?= 3.12
MODELS ?=
JOB_ARGS ?=

.PHONY: install demo demo-long test test-all bench wheelhouse clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,test,docs]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The main job end to end (python -m hpa_tf.job): on SynthHPA generated into $(RUN)/synth, or with
# DATA=DIR on any folder in the competition's layout (DIR/train/, train.csv, test/,
# sample_submission.csv, truth/ if any); JOB_ARGS: more of the job's flags (e.g. "--label-mix kaggle2021
# --texture-scale 0.5", SynthHPA nearer real data). Writes $(RUN)/submission.csv and $(RUN)/results.md; a rerun
# skips the stages that are done.
demo: $(STAMP)
	$(PY) -m hpa_tf.job --run $(RUN) $(if $(DATA),--data $(DATA)) --n-train $(N_TRAIN) --n-test $(N_TEST) \
		--workers $(WORKERS) $(if $(TRAIN_SET),--set $(TRAIN_SET)) $(JOB_ARGS)

# The longer CPU benchmark: the same job and models on 2000 training images and 64 test images (the
# demo's 32 among them).
demo-long:
	$(MAKE) demo RUN=runs/long N_TRAIN=2000 N_TEST=64 TRAIN_SET=data.shuffle_buffer=512

test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) -q

# The slow checks too, with PyTorch for the official segmenter (a CPU build where one is on disk).
test-all: $(STAMP)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q torch
	$(PY) -m pytest -n $(WORKERS) -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) -m benchmarks --out runs/bench

# The wheels that install hpa-tf in a Kaggle notebook with the internet off (docs/kaggle.md): hpa-tf
# built from this checkout and what the Kaggle image lacks, for the notebook's Python (KAGGLE_PYTHON).
wheelhouse: $(STAMP)
	$(PY) -m hpa_tf.wheelhouse $(WHEELHOUSE) --python-version $(KAGGLE_PYTHON) --source . $(if $(MODELS),--models $(MODELS))

clean:
	rm -rf runs .pytest_cache
