"""Per-cell labels from image labels: CAM x cell, Puzzle-CAM, out-of-fold labelling, the single-cell model."""

import shutil

import keras
import numpy as np
import pytest

from hpa_tf.config import load_config, save_config
from hpa_tf.data.contract import InputContract
from hpa_tf.models import CamScorer, build_model, image_classifier, mask_weights
from hpa_tf.models.cam import sigmoid
from hpa_tf.models.puzzle import PuzzleCAM
from tfrecord_builder.__main__ import main as build_main


@pytest.mark.parametrize("pooling", ["avg", "gem"])
def test_a_cam_cell_covering_the_image_scores_the_image_probability(pooling):
    """CAM x cell pools the features over the cell as the model pools the image: a cell that is the
    whole image gets the image's probability; with average pooling the image's logit is the
    area-weighted mean of its cells' logits."""
    keras.utils.set_random_seed(0)
    model = image_classifier("small_cnn", 64, pooling=pooling)
    model.get_layer("pool").set_weights([np.float32(2.5)] if pooling == "gem" else [])
    image = np.random.default_rng(0).random((1, 64, 64, 4)).astype("float32")
    scorer = CamScorer(model)
    out = scorer.model(image)
    features, probs = np.asarray(out["features"])[0], np.asarray(out["probs"])[0]
    mask = np.zeros((64, 64), np.uint16)
    mask[:, :40], mask[:, 40:] = 1, 2
    whole = sigmoid(scorer.cell_logits(features, mask_weights(np.ones((64, 64), np.uint16), np.array([1]), features.shape[:2])))
    np.testing.assert_allclose(whole[0], probs, atol=1e-5)
    if pooling == "avg":
        weights = mask_weights(mask, np.array([1, 2]), features.shape[:2])
        logits = scorer.cell_logits(features, weights)
        area = weights.reshape(2, -1).sum(axis=1)
        mean = (area[:, None] * logits).sum(axis=0) / area.sum()
        np.testing.assert_allclose(sigmoid(mean), probs, atol=1e-5)


def _pointwise_classifier(size: int) -> keras.Model:
    """An image classifier whose backbone looks at each 2x2 block alone: its CAM is tile-consistent."""
    bb_in = keras.Input((None, None, 4))
    bb = keras.Model(bb_in, keras.layers.AveragePooling2D(2)(keras.layers.Conv2D(8, 1, activation="relu")(bb_in)),
                     name="pointwise")
    inputs = keras.Input((size, size, 4))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(bb(inputs))
    cam = keras.layers.Conv2D(19, 1, name="cam")(keras.layers.Reshape((1, 1, -1))(pooled))
    return keras.Model(inputs, keras.layers.Activation("sigmoid")(keras.layers.Reshape((19,))(cam)))


def test_puzzle_cam_loss_is_zero_exactly_when_the_cam_is_tile_consistent():
    images = np.random.default_rng(1).random((2, 32, 32, 4)).astype("float32")
    keras.utils.set_random_seed(1)
    probs, tile_probs, rec = PuzzleCAM(_pointwise_classifier(32), 2)(images)
    assert float(np.max(rec)) < 1e-6
    np.testing.assert_allclose(tile_probs, probs, atol=1e-6)
    convolutional = image_classifier("small_cnn", 64, any_size_backbone=True)  # 3x3 convs see across tile edges
    probs, tile_probs, rec = PuzzleCAM(convolutional, 2)(np.random.default_rng(2).random((2, 64, 64, 4)).astype("float32"))
    assert float(np.min(rec)) > 1e-4 and probs.shape == tile_probs.shape == (2, 19)


def test_puzzle_cam_trains_an_image_model(built_records, tmp_path):
    from hpa_tf.training import train

    config = load_config("configs/demo_cpu.yaml", [f"data.records={built_records}", f"train.model_dir={tmp_path / 'm'}",
                                                    "data.image_size=32", "train.batch_size=2", "train.epochs=2",
                                                    "train.steps_per_epoch=3", "model.puzzle_tiles=2",
                                                    "train.tensorboard=false"])
    result = train(config)
    assert np.isfinite(result["history"]["loss"]).all()
    assert (tmp_path / "m" / "best.keras").exists()


def _loud_model(records, folder, k, cls):
    """An untrained cell-bag model that holds out fold k and whose cell head says "class cls" loudly,
    saved as a finished training folder (config.yaml, best.keras, provenance.json)."""
    from hpa_tf.training.folder import TrainingFolder, model_made_from

    keras.utils.set_random_seed(k)
    config = load_config("configs/demo_cpu_cells.yaml", [f"data.records={records}", f"data.val_folds=[{k}]",
                                                          "data.cell_size=24", f"train.model_dir={folder}"])
    model = build_model(config, InputContract.from_config(config))
    head = model.get_layer("cell_logits")
    kernel, bias = head.get_weights()
    bias[:] = -8.0
    bias[cls] = 8.0
    head.set_weights([kernel * 0.0, bias])
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "best.keras")
    save_config(config, str(folder / "config.yaml"))
    TrainingFolder(str(folder)).finish(model_made_from(config))
    return str(folder)


def _split_models(records, root, cls_of_split):
    """One loud model per fold: the labels of each image then show which split's model labelled it."""
    return [_loud_model(records, root / f"split{k}", k, cls) for k, cls in enumerate(cls_of_split)]


def test_out_of_fold_labels_come_from_the_split_that_held_the_image_out_and_resume(built_records, synth_dir, tmp_path,
                                                                                    monkeypatch):
    import pandas as pd

    from hpa_tf.pseudo import CellLabels, label, plan_splits
    from hpa_tf.pseudo import oof as label_module
    from hpa_tf.pseudo.oof import LabelError

    models = _split_models(built_records, tmp_path / "models", [3, 11])
    folds = pd.read_csv(built_records / "folds.csv", dtype={"ID": str}).set_index("ID")["fold"]
    out = tmp_path / "labels"
    calls = []
    real = label_module._label_unit

    def dies_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # a kill after the first (split, shard) was written
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(label_module, "_label_unit", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        label(str(built_records), models, str(out), source="cells", truth_dir=str(synth_dir / "truth"), progress=False)
    assert len(list((out / "parts").glob("*.npz"))) == 1
    _loud_model(built_records, tmp_path / "models" / "split0", 0, 7)  # the model at the same path is replaced
    resumed = []
    monkeypatch.setattr(label_module, "_label_unit", lambda *a, **k: resumed.append(1) or real(*a, **k))
    first = label(str(built_records), models, str(out), source="cells", truth_dir=str(synth_dir / "truth"), progress=False)
    n_units = len({(s, f) for s in range(2) for f in range(len(list(built_records.glob("images-*.tfrec"))))})
    assert len(resumed) == n_units  # the part the replaced model wrote before the kill was not reused
    again = label(str(built_records), models, str(tmp_path / "fresh"), source="cells", truth_dir=str(synth_dir / "truth"),
                  progress=False)
    np.testing.assert_array_equal(first.labels, again.labels)  # resumed == uninterrupted

    loaded = CellLabels.load(str(out))
    assert set(loaded.ids) == set(folds.index)  # two splits cover both folds
    for image_id in loaded.ids:
        raw = loaded.arrays["raw_cells"][loaded.rows(image_id)]
        mine, other = (7, 11) if folds[image_id] == 0 else (11, 7)
        assert raw[:, mine].min() > 0.99 and raw[:, other].max() < 0.01, image_id  # labelled by the held-out split only
        soft = loaded.labels[loaded.rows(image_id)]
        image_labels = loaded.image_labels[list(loaded.ids).index(image_id)]
        assert (soft[:, :18][:, image_labels[:18] == 0] == 0).all()  # never a class the image does not have
    quality = loaded.meta["quality"]
    assert quality["n_cells"] > 0 and {"naive", "cells", "combined"} <= set(quality["sources"])

    for name, val_fold, message in (("both", [0, 1], "held out by two splits"), ("all", [], "every fold")):
        config = load_config("configs/demo_cpu_cells.yaml", [f"data.records={built_records}", f"data.val_folds={val_fold}"])
        (tmp_path / name).mkdir()
        save_config(config, str(tmp_path / name / "config.yaml"))
        (tmp_path / name / "best.keras").write_bytes((tmp_path / "models" / "split0" / "best.keras").read_bytes())
        with pytest.raises(LabelError, match=message):
            plan_splits([models[0], str(tmp_path / name)])

    # The same images built with other folds (another --seed): the models trained on the old folds
    # would label images they trained on, so they are refused.
    other = tmp_path / "other_records"
    shutil.copytree(built_records, other)
    assert build_main(["build", "--data", str(synth_dir / "train"), "--labels", str(synth_dir / "train.csv"), "--out",
                       str(other), "--image-size", "64", "--cell-size", "32", "--shard-mb", "0.01", "--folds", "2",
                       "--seed", "1", "--replace-changed"]) == 0
    with pytest.raises(LabelError, match="trained on another record set or other folds"):
        label(str(other), models, str(tmp_path / "leak"), source="cells", progress=False)


def test_the_single_cell_model_learns_from_soft_labels_and_predicts(learning_records, tmp_path):
    """Soft labels from the true cells (what a perfect labeller gives): the cell model's loss falls and
    its image-level validation AP (best cell per image) is far above chance; predict scores it."""
    from hpa_tf.inference.predictor import Predictor
    from hpa_tf.training import train

    labels = _true_cell_labels(learning_records, tmp_path / "truth_labels")
    config = load_config("configs/demo_cpu_cell.yaml", [
        f"data.records={learning_records}", f"train.model_dir={tmp_path / 'cell'}", f"data.cell_labels={labels}",
        "data.cell_size=48", "train.batch_size=32", "train.epochs=4", "data.deterministic=true",
        "train.tensorboard=false", "data.cell_shuffle_buffer=512"])
    result = train(config)
    hist = result["history"]
    assert hist["loss"][-1] < 0.7 * hist["loss"][0], hist["loss"]
    assert max(hist["val_auc"]) > 0.85 and max(hist["val_map"]) > hist["val_map"][0] + 0.15, hist  # measured 0.92, +0.32
    predictor = Predictor.from_models([str(tmp_path / "cell" / "best.keras")])
    assert predictor.models[0].kind == "cell"


def _true_cell_labels(records, out):
    """Per-cell labels from SynthHPA's truth, in the labels' file format."""
    from hpa_tf.pseudo.oof import _read_folds, read_record_pairs
    from hpa_tf.pseudo.quality import true_cell_labels
    from hpa_tf.data.cell_labels import CellLabels, records_fingerprint
    from hpa_tf.truth import Truth

    truth = Truth.load(str(records.parent / "synth" / "truth"), split="train")
    folds = _read_folds(str(records))
    ids, counts, index, rows, image_labels = [], [], [], [], []
    for shard in range(len(list(records.glob("images-*.tfrec")))):
        for a, b in read_record_pairs(str(records), shard):
            image_id = a["id"].decode()
            t = true_cell_labels(a["mask"], b["cell_index"], truth.mask(image_id), truth.cell_labels[image_id])
            t[np.isnan(t).any(axis=1)] = a["labels"]  # unmatched cells: their image's labels
            ids.append(image_id), counts.append(len(t)), index.append(b["cell_index"]), rows.append(t)
            image_labels.append(a["labels"])
    order = np.argsort(ids)
    offsets = np.concatenate([[0], np.cumsum(np.array(counts)[order])])
    CellLabels(np.array(ids)[order], offsets, np.concatenate([index[i] for i in order]),
               np.concatenate([rows[i] for i in order]).astype("float32"), np.array(image_labels)[order],
               np.array([folds[ids[i]] for i in order]),
               meta={"records_fingerprint": records_fingerprint(str(records))}).save(str(out))
    return out
