"""predict.py: every cell scored with all 19 classes, rules, cell views, cache/resume, bad images, truth."""

import argparse
import dataclasses
import shutil

import cv2

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_512, SAMPLE_512_ID

from hpa_tf.inference import Combination, ModelScores, PrepareSpec, combine, prepare_array
from hpa_tf.inference.combine import DEFAULT_RULE, to_ranks
from hpa_tf.inference.predictor import Predictor, ScoringModel, top_class_overlay
from hpa_tf.inference.report import TRUE_IMAGE_ROW, report
from hpa_tf.inference.runner import RunConfig, run
from hpa_tf.io import read_image
from hpa_tf.models import cell_bag_model
from hpa_tf.predict import add_combination_args, combination_argv, combination_from
from hpa_tf.rle import decode_mask, mask_area_border
from hpa_tf.segmentation import Segmentation
from hpa_tf.submission import read_submission
from predict import main as predict_main


def _green_detector(size: int) -> keras.Model:
    """Class k's probability rises with the brightest green pixel the model sees (class 0 strongly)."""
    x = keras.Input((size, size, 4))
    pooled = keras.layers.GlobalMaxPooling2D()(x)
    dense = keras.layers.Dense(19, activation="sigmoid")
    model = keras.Model(x, dense(pooled))
    kernel = np.zeros((4, 19), np.float32)
    kernel[1] = 10.0
    dense.set_weights([kernel, np.full(19, -5.0, np.float32)])
    return model


def _two_cells(size=64):
    image = np.zeros((size, size, 4), np.uint8)
    cells = np.zeros((size, size), np.uint16)
    cells[4:28, 4:28], cells[36:60, 36:60] = 1, 2
    image[cells > 0, 2] = 100
    image[cells == 2, 1] = 255  # only cell 2 has green
    return image, cells


def test_one_cell_at_a_time_tells_the_cells_of_an_image_apart():
    image, cells = _two_cells()
    prepared = prepare_array(image, Segmentation(cells, cells), PrepareSpec("", image_sizes=(32,)), "a")
    for view in ("masked", "centred"):
        predictor = Predictor([ScoringModel.wrap(_green_detector(32))], cell_view=view)
        scores = predictor.score(prepared)[0]
        assert scores.cells[1, 0] > 0.99 and scores.cells[0, 0] < 0.01, view  # cell 2 green, cell 1 not
        assert scores.image[0] > 0.99  # the whole image has green somewhere
        by_rule = {rule: combine([scores], 2, rule) for rule in ("image", "cell", "image_x_cell")}
        assert by_rule["image"][0, 0] == by_rule["image"][1, 0]  # whole-image scores cannot tell them apart
        assert by_rule["image_x_cell"][1, 0] > 0.98 > 0.01 > by_rule["image_x_cell"][0, 0]


def test_the_predictor_lowers_cells_cut_by_the_edge_and_small_cells_from_their_masks():
    image, cells = _two_cells()
    cells[0:6, 50:64] = 3  # a sliver cut by the top edge
    image[cells == 3, 1] = 255
    prepared = prepare_array(image, Segmentation(cells, cells), PrepareSpec("", image_sizes=(32,)), "a")
    plain = Predictor([ScoringModel.wrap(_green_detector(32))])
    scores = plain.score(prepared)
    base = plain.combine(scores, prepared)
    lowered = Predictor(plain.models, rule=dataclasses.replace(plain.rule, border_factor=0.5, small_area=0.5, small_factor=0.1))
    out = lowered.combine(scores, prepared)
    np.testing.assert_allclose(out[:2], base[:2])  # the two whole cells keep their scores
    np.testing.assert_allclose(out[2], base[2] * 0.5 * 0.1)  # cut by the edge and 84 px against a median of 576
    with pytest.raises(ValueError, match="whole test set"):
        Predictor(plain.models, rule=Combination(average="rank")).combine(scores, prepared)


def _green_cam_classifier(size: int) -> keras.Model:
    """An image classifier (backbone -> ``pool`` -> 1x1 ``cam`` conv) whose class 0 is the mean green of
    the pooled region: its CAM is high exactly on green pixels."""
    x = keras.Input((size, size, 4))
    features = keras.layers.AveragePooling2D(4)(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    cam = keras.layers.Conv2D(19, 1, name="cam")
    logits = keras.layers.Reshape((19,))(cam(keras.layers.Reshape((1, 1, -1))(pooled)))
    model = keras.Model(x, keras.layers.Activation("sigmoid")(logits))
    kernel = np.zeros((1, 1, 4, 19), np.float32)
    kernel[0, 0, 1] = 40.0
    cam.set_weights([kernel, np.full(19, -5.0, np.float32)])
    return model


def test_cam_view_scores_each_cell_by_its_own_part_of_the_map_under_tta():
    image, cells = _two_cells()
    prepared = prepare_array(image, Segmentation(cells, cells), PrepareSpec("", image_sizes=(32,)), "a")
    for tta in ("none", "flip", "d4"):  # the mask moves with the image
        scores = Predictor([ScoringModel.wrap(_green_cam_classifier(32))], cell_view="cam", tta=tta).score(prepared)[0]
        assert scores.cells[1, 0] > 0.99 and scores.cells[0, 0] < 0.01, tta  # cell 2 green, cell 1 not
        assert 0.3 < scores.image[0] < 0.9  # the whole image: green on a seventh of it


def test_cell_bag_scores_all_cells_and_padding_changes_nothing():
    keras.utils.set_random_seed(1)
    model = cell_bag_model("small_cnn", 32)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 96, 4), dtype=np.uint8)
    cells = np.zeros((96, 96), np.uint16)
    for k in range(5):  # 5 cells: padded to a bag of 16 inside the predictor
        cells[k * 18 : k * 18 + 15, 10:40] = k + 1
    prepared = prepare_array(image, Segmentation(cells, cells), PrepareSpec("", cell_sizes=(32,)), "a")
    for tta in ("none", "d4"):
        scores = Predictor([ScoringModel.wrap(model)], tta=tta).score(prepared)[0]
        assert scores.cells.shape == (5, 19)
        crops = prepared.crops[32].astype(np.float32) / 255.0
        if tta == "none":  # the same as the bag of exactly these 5 cells
            direct = model({"cells": crops[None], "mask": np.ones((1, 5), np.float32)}, training=False)
            np.testing.assert_allclose(scores.cells, np.asarray(direct["cells"])[0], atol=1e-5)
            np.testing.assert_allclose(scores.image, np.asarray(direct["image"])[0], atol=1e-5)


def test_rules_and_weights():
    a = ModelScores(np.full(19, 0.8), None)
    b = ModelScores(np.full(19, 0.2), np.array([[0.5] * 19, [1.0] * 19]))
    out = combine([a, b], 2, "image_x_cell", [3, 1])
    np.testing.assert_allclose(out[:, 0], [0.65 * 0.5, 0.65 * 1.0])  # image = (3*0.8 + 0.2) / 4
    with pytest.raises(ValueError, match="cell-level"):
        combine([a], 2, "cell")
    with pytest.raises(ValueError, match="rule"):
        combine([a], 2, "vote")
    # A model at weight 0 is left out of both levels (the job weighs the models it does not submit with 0).
    np.testing.assert_allclose(combine([a, b], 2, "image_x_cell", [0, 1]), combine([b], 2, "image_x_cell"))
    with pytest.raises(ValueError, match="cell-level"):
        combine([a, b], 2, "cell", [1, 0])


def test_blend_moves_from_the_image_score_to_the_cell_score_with_its_weight():
    s = ModelScores(np.full(19, 0.9), np.array([[0.1] * 19, [0.5] * 19]))
    blends = [combine([s], 2, Combination("blend", cell_weight=w))[:, 3] for w in (0.0, 0.3, 0.7, 1.0)]
    np.testing.assert_allclose(blends[0], [0.9, 0.9])  # all image: the cells tie
    np.testing.assert_allclose(blends[3], [0.1, 0.5])  # all cell
    np.testing.assert_allclose(blends[2], [0.7 * 0.1 + 0.3 * 0.9, 0.7 * 0.5 + 0.3 * 0.9])
    assert blends[1][1] - blends[1][0] < blends[2][1] - blends[2][0]  # more cell weight: cells further apart
    with pytest.raises(ValueError, match="cell_weight"):
        Combination("blend", cell_weight=1.5)


def test_geometric_lets_the_image_level_order_the_images_and_the_cells_order_each_image():
    """Two images scored by a single-cell model (image level: its best cell). Image a is surer of
    class 3 (0.9) than b (0.8); a's second cell (0.6) scores below b's two cells on its own. The
    blend and image x cell put it after them; the geometric rule with its default share keeps all of
    a's cells first, and still orders each image's cells by their own scores."""
    cells = {"a": np.array([[0.9] * 19, [0.6] * 19]), "b": np.array([[0.8] * 19, [0.75] * 19])}
    scores = {name: ModelScores(c.max(axis=0), c) for name, c in cells.items()}

    def order(rule: Combination) -> list[str]:
        by_cell = {f"{name}{k}": float(combine([s], 2, rule)[k, 3]) for name, s in scores.items() for k in range(2)}
        return sorted(by_cell, key=by_cell.get, reverse=True)

    assert order(Combination("blend")) == order(Combination("image_x_cell")) == ["a0", "b0", "b1", "a1"]
    assert order(Combination("geometric")) == ["a0", "a1", "b0", "b1"]
    a = scores["a"]
    # A share of one half ranks every cell as image x cell does (the square root of its product);
    # 1 is the cell score, 0 the image score on every cell (the image rule).
    np.testing.assert_allclose(combine([a], 2, Combination("geometric", cell_weight=0.5)),
                               np.sqrt(combine([a], 2, "image_x_cell")))
    np.testing.assert_allclose(combine([a], 2, Combination("geometric", cell_weight=1.0)), a.cells)
    np.testing.assert_allclose(combine([a], 2, Combination("geometric", cell_weight=0.0)), combine([a], 2, "image"))


def test_the_cell_share_belongs_to_blend_and_geometric_and_each_has_its_default(capsys):
    assert Combination("geometric").weight == 0.15 and Combination("blend").weight == 0.5
    assert Combination("image_x_cell").weight is None and Combination() == Combination("geometric")
    # A Combination changed to another rule takes that rule's share, not the one it had by default.
    assert dataclasses.replace(Combination("blend"), rule="geometric").weight == 0.15
    assert Combination("blend", cell_weight=np.float32(0.3)).weight == pytest.approx(0.3)
    assert [Combination(r).describe() for r in ("image_x_cell", "blend", "geometric")] == [
        "image x cell", "blend 0.5 cell + 0.5 image", "geometric image^0.85 x cell^0.15"]
    for bad in (-0.1, 1.5, float("nan"), True, "0.3"):
        with pytest.raises(ValueError, match="cell_weight must be a number in"):
            Combination("geometric", cell_weight=bad)
    with pytest.raises(ValueError, match="applies to the rules blend and geometric only"):
        Combination("image_x_cell", cell_weight=0.5)
    # A run saved before the share was the two rules' alone recorded 0.5 with every rule.
    assert Combination.parse({"rule": "cell", "cell_weight": 0.5, "negative": "mean"}) == Combination("cell", negative="mean")
    # predict.py's flags: the rule's own default share, a share for a rule without one refused in one line.
    parser = argparse.ArgumentParser()
    add_combination_args(parser)
    assert combination_from(parser.parse_args([]), parser) == Combination("geometric", cell_weight=0.15)
    assert combination_from(parser.parse_args(["--combine", "blend"]), parser).cell_weight == 0.5
    geometric = combination_from(parser.parse_args(["--combine", "geometric", "--cell-weight", "0.3"]), parser)
    assert combination_from(parser.parse_args(combination_argv(geometric)), parser) == geometric
    for argv, message in ((["--combine", "image_x_cell", "--cell-weight", "0.15"], "--cell-weight applies to --combine blend "
                           "or geometric only, not image_x_cell"), (["--cell-weight", "2"], "--cell-weight must be a number")):
        with pytest.raises(SystemExit):
            combination_from(parser.parse_args(argv), parser)
        assert message in capsys.readouterr().err


def test_negative_from_the_other_classes():
    """A cell sure of another class is not Negative; a cell sure of none is, whatever the models' own
    Negative score says."""
    cells = np.full((2, 19), 0.05)
    cells[0, 4] = 0.95  # cell 0 shows nuclear speckles
    cells[:, 18] = 0.5  # the models cannot tell Negative apart
    s = ModelScores(np.ones(19), cells)
    own = combine([s], 2, Combination("cell"))[:, 18]
    complement = combine([s], 2, Combination("cell", negative="complement"))[:, 18]
    mean = combine([s], 2, Combination("cell", negative="mean"))[:, 18]
    np.testing.assert_allclose(own, [0.5, 0.5])
    np.testing.assert_allclose(complement, [0.05 * 0.95**17, 0.95**18])
    np.testing.assert_allclose(mean, (own + complement) / 2)
    assert complement[1] > 0.35 > 0.05 > complement[0]
    np.testing.assert_allclose(combine([s], 2, Combination("cell", negative="complement"))[:, :18], cells[:, :18])


def test_small_and_edge_cells_rank_below_whole_cells():
    s = ModelScores(np.ones(19), np.full((4, 19), 0.6))
    area, border = np.array([1000, 900, 100, 1100]), np.array([0, 1, 0, 1])
    c = Combination("cell", small_area=0.25, small_factor=0.5, border_factor=0.8)
    out = combine([s], 4, c, area=area, border=border)
    np.testing.assert_allclose(out[:, 7], [0.6, 0.6 * 0.8, 0.6 * 0.5, 0.6 * 0.8])  # median area 950: 100 is small
    np.testing.assert_allclose(combine([s], 4, Combination("cell"), area=area, border=border), s.cells)
    with pytest.raises(ValueError, match="area and border"):
        combine([s], 4, c)


def test_rank_averaging_lets_models_of_other_scales_count_alike():
    """Model a's probabilities barely move (0.30-0.32), b's span 0.1-0.9: their mean follows b alone,
    their mean rank follows both."""
    a = [0.30, 0.31, 0.32]
    b = [0.9, 0.1, 0.5]
    images = [[ModelScores(np.full(19, a[i]), np.full((1, 19), a[i])), ModelScores(np.full(19, b[i]), np.full((1, 19), b[i]))]
              for i in range(3)]
    by_mean = [combine(m, 1, "cell")[0, 0] for m in images]
    by_rank = [combine(m, 1, Combination("cell", average="rank"))[0, 0] for m in to_ranks(images)]
    assert np.argsort(by_mean).tolist() == [1, 2, 0]  # b's order
    np.testing.assert_allclose(by_rank, [(1 / 3 + 1) / 2, (2 / 3 + 1 / 3) / 2, (1 + 2 / 3) / 2])
    assert np.argsort(by_rank).tolist() == [1, 0, 2]
    ranked = to_ranks([[ModelScores(np.zeros(19), None)], [ModelScores(np.ones(19), np.zeros((2, 19)))]])
    assert ranked[0][0].cells is None and ranked[1][0].cells.shape == (2, 19)  # no cells stays no cells


def test_predict_writes_every_cell_resumes_and_survives_a_bad_image(synth_dir, saved_models, tmp_path):
    data = tmp_path / "test"
    shutil.copytree(synth_dir / "test", data)
    sample = pd.read_csv(synth_dir / "sample_submission.csv")
    bad = sample["ID"].iloc[1]
    (data / f"{bad}_green.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "sub.csv"
    args = ["--data", str(data), "--models", *saved_models, "--out", str(out), "--workers", "1",
            "--sample-submission", str(synth_dir / "sample_submission.csv"), "--truth", str(synth_dir / "truth"),
            "--overlays", "1", "--tta", "flip"]
    assert predict_main(args) == 0
    rows = read_submission(str(out))
    assert [r.image_id for r in rows] == list(sample["ID"])  # the sample's order
    for row, (_, s) in zip(rows, sample.iterrows()):
        assert (row.width, row.height) == (s["ImageWidth"], s["ImageHeight"])
        if row.image_id == bad:
            assert row.classes.size == 0  # an empty row, and the run went on
            continue
        assert row.classes.size == 19 * len(row.masks) > 0  # every cell, every class
        masks = np.stack([decode_mask(m, row.height, row.width) for m in row.masks])
        assert masks.sum(0).max() == 1  # cells do not overlap
    errors = pd.read_csv(tmp_path / "sub.errors.csv")
    assert errors["ID"].tolist() == [bad] and "green" in errors["error"].iloc[0]
    summary = pd.read_json(tmp_path / "sub.summary.json", typ="series")
    assert 0.0 <= summary["map"] <= 1.0 and summary["scored_now"] == len(sample) - 1
    assert len(list((tmp_path / "sub.overlays").glob("*.png"))) == 1

    # The results table re-scores from the cache: its combination row is the submission's score.
    results = report(str(out), str(synth_dir / "truth"), str(synth_dir / "sample_submission.csv"), {}, str(tmp_path / "rep"))
    assert results["**submission**: geometric image^0.85 x cell^0.15, all models"]["mAP"] == pytest.approx(summary["map"])
    assert len(results) == 7 and (tmp_path / "rep" / "ap_per_class.png").stat().st_size > 0
    assert 0.0 <= results[TRUE_IMAGE_ROW]["mAP"] <= 1.0

    # Another combination reuses the cache: cells cut by the edge (their masks say which) score half.
    halved = tmp_path / "halved.csv"
    run(RunConfig(data=str(data), models=saved_models, out=str(halved), cache=str(tmp_path / "sub.csv.cache"),
                  workers=0, tta="flip", sample_submission=str(synth_dir / "sample_submission.csv"), overlays=0,
                  combine=Combination(DEFAULT_RULE, border_factor=0.5)))
    edge_cells = 0
    for before, after in zip(rows, read_submission(str(halved))):
        if not before.masks:
            continue
        edge = np.array([mask_area_border(m, before.height, before.width)[1] for m in before.masks])
        np.testing.assert_allclose(after.confidences, before.confidences * np.where(edge[before.mask_index], 0.5, 1.0),
                                   rtol=1e-5)
        edge_cells += int(edge.sum())
    assert edge_cells > 0

    # A killed run resumes: drop two cached images; the rerun scores only those and gives the same CSV.
    cached = sorted((tmp_path / "sub.csv.cache").glob("*.npz"))
    for path in cached[:2]:
        path.unlink()
    before = out.read_text()
    summary = run(RunConfig(data=str(data), models=saved_models, out=str(out), workers=0, tta="flip",
                            sample_submission=str(synth_dir / "sample_submission.csv"), overlays=0))
    assert summary["scored_now"] == 2 and out.read_text() == before

    # Other settings must not silently mix with the cached scores.
    with pytest.raises(ValueError, match="another run"):
        run(RunConfig(data=str(data), models=saved_models, out=str(out), workers=0, tta="none", overlays=0))

    # The same models by other paths, the images by a link, are the same run: every score comes from the cache.
    copies = [str(shutil.copy(m, tmp_path / f"copy{k}.keras")) for k, m in enumerate(saved_models)]
    (tmp_path / "linked").symlink_to(data)
    summary = run(RunConfig(data=str(tmp_path / "linked"), models=copies, out=str(out), workers=0, tta="flip",
                            sample_submission=str(synth_dir / "sample_submission.csv"), overlays=0))
    assert summary["scored_now"] == 0 and out.read_text() == before
    # A cache whose key.json is unreadable (or gone) cannot say whose scores it holds: refused, then
    # discarded on --overwrite, which removes the cache's files and nothing else of the folder.
    (tmp_path / "sub.csv.cache" / "key.json").write_text('{"models": 5}')  # not the shape a cache writes
    (tmp_path / "sub.csv.cache" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds scores but no readable key.json"):
        run(RunConfig(data=str(data), models=saved_models[1:], out=str(out), workers=0, overlays=0))
    summary = run(RunConfig(data=str(data), models=saved_models[1:], out=str(out), workers=0, overlays=0,
                            overwrite=True))
    assert summary["scored_now"] == len(sample) - 1 and summary["config"]["data"] == str(data)
    assert (tmp_path / "sub.csv.cache" / "notes.txt").read_text() == "mine"

    # bench_combine scores a prediction from its cache, wherever --cache put it, from any working
    # directory; a prediction made without --truth is named as such.
    from benchmarks.bench_combine import on_test_set

    bench = tmp_path / "bench"
    same = dict(data=str(data), models=saved_models[1:], out=str(bench / "pred" / "submission.csv"), workers=0,
                overlays=0, cache=str(tmp_path / "sub.csv.cache"), sample_submission=str(synth_dir / "sample_submission.csv"))
    run(RunConfig(**same))
    with pytest.raises(ValueError, match="predicted without --truth"):
        on_test_set(str(bench), [Combination()])
    summary = run(RunConfig(**same, truth=str(synth_dir / "truth")))
    assert summary["scored_now"] == 0
    assert on_test_set(str(bench), [Combination()])["geometric image^0.85 x cell^0.15"]["given"] == pytest.approx(summary["map"])
    # ... but not from a cache that lost an entry, or that a later prediction (--overwrite) filled anew.
    next((tmp_path / "sub.csv.cache").glob("*.npz")).unlink()
    with pytest.raises(ValueError, match="1 of 4 images of .* have no readable entry"):
        on_test_set(str(bench), [Combination()])
    run(RunConfig(**same, truth=str(synth_dir / "truth")))  # scores that image again
    # the same models by other paths keep the cache this prediction's (copies: its key's paths change)
    run(RunConfig(**{**same, "models": copies[1:], "out": str(tmp_path / "copied.csv")}))
    assert on_test_set(str(bench), [Combination()])["geometric image^0.85 x cell^0.15"]["given"] == pytest.approx(summary["map"])
    run(RunConfig(**{**same, "models": saved_models, "out": str(tmp_path / "later.csv")}, overwrite=True))
    with pytest.raises(ValueError, match="scores of a later prediction"):
        on_test_set(str(bench), [Combination()])
    # --out naming a folder is refused before any image is scored.
    with pytest.raises(IsADirectoryError, match="is a folder"):
        run(RunConfig(data=str(data), models=saved_models, out=str(bench), workers=0, overlays=0))

    # A rule that needs cell scores, from an image model without cell views: refused before any scoring.
    with pytest.raises(ValueError, match="--combine geometric needs cell-level scores .* use --combine image"):
        run(RunConfig(data=str(data), models=saved_models[:1], out=str(tmp_path / "img.csv"), workers=0, overlays=0,
                      cell_view="none"))
    assert not list((tmp_path / "img.csv.cache").glob("*.npz"))
    # A weight of 0 leaves the cell-bag model's cells out of every rule: the same refusal.
    with pytest.raises(ValueError, match="needs cell-level scores"):
        run(RunConfig(data=str(data), models=saved_models, weights=[1.0, 0.0], out=str(tmp_path / "img.csv"),
                      workers=0, overlays=0, cell_view="none"))


def test_notebook_use_on_the_real_sample(tmp_path):
    image = read_image(str(SAMPLE_512), SAMPLE_512_ID)
    predictor = Predictor.from_models([_green_detector(64)])
    cells, cell_ids, probs = predictor.predict_image(image)
    assert cells.shape == image.shape[:2] and len(cell_ids) == probs.shape[0] > 3
    assert set(cell_ids.tolist()) == set(np.unique(cells[cells > 0]).tolist())
    assert np.all((probs >= 0) & (probs <= 1))
    top_class_overlay(image, cells, cell_ids, probs, str(tmp_path / "cells.png"))
    assert (tmp_path / "cells.png").stat().st_size > 1000


def _trained_pair(records, tmp_path, kinds=("image", "cells")):
    """An image model (48 px from 64 px records) and a cell-bag model (24 px from 32 px crops) (and a
    single-cell model, 24 px, if asked), built from their configs as train_tpu.py builds them: each
    carries its input contract."""
    from hpa_tf.config import load_config
    from hpa_tf.data.contract import InputContract
    from hpa_tf.models import build_model

    paths = []
    sizes = {"image": ["data.image_size=48"], "cells": ["data.cell_size=24", "model.pooling=gem"],
             "cell": ["data.cell_size=24"]}
    for kind, extra in ((k, sizes[k]) for k in kinds):
        keras.utils.set_random_seed(2)
        config = load_config(None, [f"data.records={records}", f"model.kind={kind}", *extra])
        path = tmp_path / f"{kind}.keras"
        build_model(config, InputContract.from_config(config)).save(path)
        paths.append(path)
    return paths


def test_training_and_prediction_feed_a_model_the_same_pixels(built_records, synth_dir, tmp_path):
    """The same image's and cells' inputs, from the records through the training pipeline (no
    augmentation) and from the image file through prediction: within 1/255 (here: equal)."""
    import tensorflow as tf

    from hpa_tf.config import load_config
    from hpa_tf.data.contract import to_model_size
    from hpa_tf.data.pipeline import make_dataset, shard_files
    from hpa_tf.data.schema import parse_image_record
    from hpa_tf.inference.prepare import prepare_image
    from hpa_tf.models import read_contract

    image_path, cells_path = _trained_pair(built_records, tmp_path)
    contract = read_contract(str(cells_path))
    assert (contract["cell_size"], contract["record_cell_size"], contract["segmenter"]) == (24, 32, "classical")
    files, _ = shard_files(str(built_records), "images")
    first_id = next(iter(tf.data.TFRecordDataset(files).map(parse_image_record)))["id"].numpy().decode()
    predictor = Predictor.from_models([str(image_path), str(cells_path)])
    prepared = prepare_image(predictor.prepare_spec(str(synth_dir / "train")), first_id)

    base = [f"data.records={built_records}", "data.val_fold=-1", "data.image_size=48", "data.cell_size=24",
            "data.max_eval_cells=200"]
    trained_image, _ = next(iter(make_dataset(load_config(None, base), False, 1)))
    predicted_image = to_model_size(prepared.images[64][None], 48)
    assert np.abs(trained_image.numpy() - predicted_image.numpy()).max() <= 1 / 255

    x, _, _ = next(iter(make_dataset(load_config(None, [*base, "model.kind=cells"]), False, 1)))
    n = int(x["mask"].numpy().sum())
    assert n == prepared.n_cells > 5
    predicted_cells = to_model_size(prepared.crops[32], 24).numpy()
    assert np.abs(x["cells"].numpy()[0, :n] - predicted_cells).max() <= 1 / 255


@pytest.mark.parametrize("sides", [(128, 64), (100, 37), (512, 384), (64, 96), (33, 7)])
def test_the_compilable_resize_is_the_pipelines_resize(sides):
    """The predictor's resize (matrix products, XLA-safe) gives the training pipelines' pixels
    (``tf.image.resize(antialias=True)``), down and up, for images and bags of cells."""
    from hpa_tf.data.contract import to_model_size

    n_in, n_out = sides
    rng = np.random.default_rng(n_in)
    for shape in ((2, n_in, n_in, 4), (2, 3, n_in, n_in, 4)):
        x = rng.integers(0, 256, shape).astype(np.uint8)
        compiled, host = to_model_size(x, n_out).numpy(), to_model_size(x, n_out, compilable=False).numpy()
        assert compiled.shape == host.shape == (*shape[:-3], n_out, n_out, 4)
        assert np.abs(compiled - host).max() < 3e-5


def test_prediction_compiles_with_xla_for_every_model_kind_and_precision(built_records, synth_dir, tmp_path):
    """``--jit`` (and a TPU, which compiles every call): each model kind, its inputs resized from the
    records' size inside the call, gives the uncompiled scores; ``--precision mixed_float16`` makes a
    float32-trained model compute in float16 (outputs float32, close to float32's)."""
    from hpa_tf.inference.prepare import prepare_image

    paths = [str(p) for p in _trained_pair(built_records, tmp_path, ("image", "cells", "cell"))]
    image_id = pd.read_csv(synth_dir / "sample_submission.csv")["ID"].iloc[0]
    scores = {}
    for name, options in (("eager", {}), ("xla", {"jit": True}), ("half", {"jit": True, "dtype": "mixed_float16"})):
        for view in ("cam", "masked"):
            predictor = Predictor.from_models(paths, cell_view=view, tta="flip", batch=4, **options)
            prepared = prepare_image(predictor.prepare_spec(str(synth_dir / "test")), image_id)
            assert prepared.n_cells > 3, prepared.error
            scores[name, view] = predictor.score(prepared)
        if name == "half":
            convs = [layer for m in predictor.models for layer in m.model._flatten_layers()
                     if isinstance(layer, keras.layers.Conv2D)]
            assert convs and {layer.compute_dtype for layer in convs} == {"float16"}
    for view in ("cam", "masked"):
        for eager, xla, half in zip(scores["eager", view], scores["xla", view], scores["half", view]):
            assert np.abs(eager.image - xla.image).max() < 1e-4 and np.abs(eager.cells - xla.cells).max() < 1e-4
            assert 0 < np.abs(eager.cells - half.cells).max() < 2e-2  # half precision: close, not the same


def test_a_model_refuses_another_segmenter_than_its_training(built_records, synth_dir, tmp_path):
    from hpa_tf.inference.runner import resolve_segmenter
    from hpa_tf.models import read_contract

    image_path, _ = _trained_pair(built_records, tmp_path)
    contracts = {str(image_path): read_contract(str(image_path))}
    assert resolve_segmenter(None, contracts) == "classical"  # the default: what it was trained on
    assert resolve_segmenter("precomputed:masks", contracts) == "precomputed:masks"  # masks of any origin pass
    with pytest.raises(ValueError, match="not the classical segmenter the models were trained with.*--force"):
        resolve_segmenter("hpacellseg:nuclei=a,cell=b", contracts)
    assert resolve_segmenter("hpacellseg:nuclei=a,cell=b", contracts, force=True).startswith("hpacellseg")
    with pytest.raises(ValueError, match="give --segmenter"):
        resolve_segmenter(None, {"m": {"segmenter": "hpacellseg:nuclei=a,cell=b"}})


def test_prediction_under_a_mirrored_strategy_equals_one_device(built_records, synth_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hpa_tf.inference import cache

    models = [str(p) for p in _trained_pair(built_records, tmp_path)]
    root = Path(__file__).resolve().parents[1]
    outs = {}
    for name, extra in (("one", []), ("two", ["--strategy", "cpu_mirrored", "--logical-cpus", "2", "--batch", "3"])):
        out = tmp_path / name / "sub.csv"
        run_ = subprocess.run([sys.executable, str(root / "predict.py"), "--data", str(synth_dir / "test"), "--models",
                               *models, "--out", str(out), "--workers", "0", "--overlays", "0", "--group", "3", *extra],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert run_.returncode == 0, run_.stderr[-2000:]
        outs[name] = {i: cache.load(f"{out}.cache", i, 2) for i in pd.read_csv(out)["ID"]}
    for image_id, entry in outs["one"].items():
        other = outs["two"][image_id]
        for a, b in zip(entry[4], other[4]):
            assert np.abs(a.image - b.image).max() < 1e-5 and np.abs(a.cells - b.cells).max() < 1e-5


def test_downsized_test_images_get_rows_and_masks_at_the_sample_submissions_size(synth_dir, saved_models, tmp_path):
    """Issue 22, item 1: test images downsized to save time (256 -> 128 px); the sample submission
    keeps 256: rows and masks at 256 (masks scaled by nearest neighbour); another shape stops."""
    from hpa_tf.io import scan_image_ids

    small = tmp_path / "small"
    small.mkdir()
    ids = scan_image_ids(str(synth_dir / "test"))[:2]
    for i in ids:
        for c in ("red", "green", "blue", "yellow"):
            plane = cv2.imread(str(synth_dir / "test" / f"{i}_{c}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(small / f"{i}_{c}.png"), cv2.resize(plane, (128, 128), interpolation=cv2.INTER_AREA))
    sample = pd.read_csv(synth_dir / "sample_submission.csv").set_index("ID").loc[ids].reset_index()
    sample.to_csv(tmp_path / "sample.csv", index=False)
    out = tmp_path / "sub.csv"
    assert predict_main(["--data", str(small), "--models", *saved_models, "--out", str(out), "--workers", "0",
                         "--sample-submission", str(tmp_path / "sample.csv"), "--overlays", "1"]) == 0
    rows = read_submission(str(out), sizes={i: (256, 256) for i in ids})
    assert all(r.masks for r in rows)
    run(RunConfig(data=str(small), models=saved_models, out=str(tmp_path / "native.csv"), workers=0, overlays=0))
    small_rows = {r.image_id: r for r in read_submission(str(tmp_path / "native.csv"))}
    for row in rows:  # without a sample submission the files' size is right
        other = small_rows[row.image_id]
        assert (other.width, other.height) == (128, 128) and len(other.masks) >= len(row.masks)
        big = decode_mask(row.masks[0], 256, 256)
        want = cv2.resize(decode_mask(other.masks[0], 128, 128).astype(np.uint8), (256, 256),
                          interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(big, want.astype(bool))
    sample.loc[0, "ImageWidth"] = 300  # another shape than the files': said before any image is scored
    sample.to_csv(tmp_path / "sample.csv", index=False)
    with pytest.raises(ValueError, match=f"1 of 2 images have another shape .*image {ids[0]}: its files are 128x128 px, "
                       "the sample submission says 300x256"):
        run(RunConfig(data=str(small), models=saved_models, out=str(tmp_path / "x.csv"), workers=0, overlays=0,
                      sample_submission=str(tmp_path / "sample.csv")))
    assert not (tmp_path / "x.csv.cache").exists()


def test_a_sample_submission_whose_images_are_missing_is_an_error_naming_them(synth_dir, saved_models, tmp_path):
    """Issue 22, item 5: upper-case extensions are found; images that are not there are named."""
    from hpa_tf.io import scan_image_ids

    data = tmp_path / "upper"
    data.mkdir()
    ids = scan_image_ids(str(synth_dir / "test"))[:2]
    for i in ids:
        for c, ext in zip(("red", "green", "blue", "yellow"), (".PNG", ".Png", ".PNG", ".PNG")):
            shutil.copy(synth_dir / "test" / f"{i}_{c}.png", data / f"{i}_{c}{ext}")
    sample = pd.read_csv(synth_dir / "sample_submission.csv").set_index("ID").loc[ids].reset_index()
    sample.to_csv(tmp_path / "sample.csv", index=False)
    out = tmp_path / "sub.csv"
    args = ["--data", str(data), "--models", *saved_models, "--out", str(out), "--workers", "0", "--overlays", "0"]
    assert predict_main([*args, "--sample-submission", str(tmp_path / "sample.csv")]) == 0
    assert all(r.masks for r in read_submission(str(out)))  # every image found and segmented
    sample = pd.concat([sample, pd.DataFrame({"ID": ["gone-1"], "ImageWidth": [256], "ImageHeight": [256],
                                              "PredictionString": [""]})], ignore_index=True)
    sample.to_csv(tmp_path / "sample.csv", index=False)
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images of .*sample.csv have no file in .*\(gone-1;"):
        predict_main([*args, "--sample-submission", str(tmp_path / "sample.csv"), "--out", str(tmp_path / "b.csv")])
    sample.loc[0, "ImageWidth"] = 0  # sizes no image can have: said before any work
    sample.loc[1, "ImageHeight"] = None
    sample.to_csv(tmp_path / "sample.csv", index=False)
    with pytest.raises(ValueError, match=f"ImageWidth/ImageHeight of 2 rows are no positive whole numbers \\({ids[0]}, {ids[1]}\\)"):
        predict_main([*args, "--sample-submission", str(tmp_path / "sample.csv"), "--out", str(tmp_path / "b.csv")])
