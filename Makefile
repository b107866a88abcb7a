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

.PHONY: install demo demo-long test test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on SynthHPA: generate, build records, train the image and cell-bag
# models, predict the test split, score every method against the cell-level truth (results.md).
demo: $(STAMP)
	$(PY) -m hpa_tf.synthetic --out $(RUN)/synth --n-train $(N_TRAIN) --n-test $(N_TEST) --size 1024 --seed 0 --workers $(WORKERS)
	$(PY) -m tfrecord_builder build --data $(RUN)/synth/train --labels $(RUN)/synth/train.csv --out $(RUN)/records --workers $(WORKERS) --shard-mb 20
	$(PY) -m tfrecord_builder inspect $(RUN)/records
	$(PY) -m hpa_tf.segmentation --data $(RUN)/synth/test --out $(RUN)/masks --workers $(WORKERS) --truth $(RUN)/synth/truth
	$(PY) -m hpa_tf.baselines --data $(RUN)/synth --kind image-labels --out $(RUN)/oracle_image_labels.csv
	$(PY) -m hpa_tf.metrics --truth $(RUN)/synth/truth --submission $(RUN)/oracle_image_labels.csv --json $(RUN)/oracle_image_labels.json
	$(PY) -m hpa_tf.baselines --data $(RUN)/synth --kind perfect --masks $(RUN)/masks --out $(RUN)/perfect_on_predicted_masks.csv
	$(PY) -m hpa_tf.metrics --truth $(RUN)/synth/truth --submission $(RUN)/perfect_on_predicted_masks.csv --json $(RUN)/perfect_on_predicted_masks.json
	$(PY) train_tpu.py --config configs/demo_cpu.yaml --set data.records=$(RUN)/records train.model_dir=$(RUN)/model_image $(TRAIN_SET)
	$(PY) train_tpu.py --config configs/demo_cpu_cells.yaml --set data.records=$(RUN)/records train.model_dir=$(RUN)/model_cells $(TRAIN_SET)
	$(PY) predict.py --data $(RUN)/synth/test --models $(RUN)/model_image/best.keras $(RUN)/model_cells/best.keras \
		--out $(RUN)/pred/submission.csv --sample-submission $(RUN)/synth/sample_submission.csv --truth $(RUN)/synth/truth --overwrite
	$(PY) -m hpa_tf.inference.report --pred $(RUN)/pred/submission.csv --truth $(RUN)/synth/truth \
		--sample-submission $(RUN)/synth/sample_submission.csv --out $(RUN) \
		--reference "oracle image labels given to every true cell (labels no method has at test time)=$(RUN)/oracle_image_labels.json" \
		--reference "perfect answer on the predicted masks (the ceiling segmentation leaves)=$(RUN)/perfect_on_predicted_masks.json"

# The longer CPU benchmark (under an hour on 2 cores): the same job and models on 2000 training
# images and 64 test images (the demo's 32 among them).
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

clean:
	rm -rf runs .pytest_cache
