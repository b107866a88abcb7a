"""predict.py --time-budget: measure, project by image size, drop work in the order given, never rows."""

import functools
import itertools
import json

import numpy as np
import pandas as pd
import pytest

from hpa_tf.inference import cache
from hpa_tf.inference.budget import Estimates, TimeBudget, parse_duration, project
from hpa_tf.inference.combine import DEFAULT_RULE, combine
from hpa_tf.inference.plan import Plan, applicable, parse_drop_order
from hpa_tf.inference.report import report
from hpa_tf.submission import read_submission
from predict import main as predict_main


def tick_clock(step: float = 1.0):
    """A clock that moves ``step`` seconds each time it is read: every timed piece of work costs a
    whole number of ticks, whatever the machine's speed."""
    return functools.partial(next, itertools.count(0.0, step))


class SettableClock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_durations_and_drop_orders_and_their_errors(capsys):
    assert [parse_duration(t) for t in ("8h30m", "90m", "2h", "3600s", "3600", "1h0m30s")] == \
        [30600.0, 5400.0, 7200.0, 3600.0, 3600.0, 3630.0]
    for bad in ("8x", "h", "1h1h", "-5", "0", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_drop_order("tta,cell_view,models", 3) == ["tta", "cell_view", "model:3", "model:2"]
    assert parse_drop_order("models,tta", 2) == ["model:2", "tta"]
    for bad in ("tta,model:1", "tta,model:4", "colour"):
        with pytest.raises(ValueError):
            parse_drop_order(bad, 3)
    assert applicable(["tta", "cell_view", "model:2"], "flip", "cam", ["image", "cells"]) == ["tta", "model:2"]
    for flags, expected in ((["--time-budget", "8x"], "--time-budget: '8x' is not a duration"),
                            (["--budget-drop", "tta,model:3"], "--budget-drop: 'model:3' is not a piece of work")):
        with pytest.raises(SystemExit) as exit_:
            predict_main(["--data", "d", "--models", "a.keras", "b.keras", "--out", "o.csv", *flags])
        assert exit_.value.code == 2
        assert expected in capsys.readouterr().err.splitlines()[-1]


def test_the_projection_scales_the_cpu_side_by_image_size():
    # 3 images of 1728 px measured: 3 s each waiting for the CPU side (the first 20 s: start-up,
    # not counted by the median), 2 s of model, 0.5 s caching
    est = Estimates()
    for seconds in (20.0, 3.0, 3.0):
        est.add_image("prepare", seconds, 1728**2)
        est.add_image("cpu", 40.0, 1728**2)
    est.add("model:1", 6.0, 3)
    est.add("other", 1.5, 3)
    small, big = project(est, Plan(), [1728**2] * 10, 1), project(est, Plan(), [3072**2] * 10, 1)
    assert small == pytest.approx(10 * (3.0 + 2.5))
    assert big == pytest.approx(10 * (3.0 * (3072 / 1728) ** 2 + 2.5))  # the models' work does not grow
    # with workers, an image takes at least its CPU seconds shared among them
    assert project(est, Plan(), [1728**2], 1, workers=4) == pytest.approx(10.0)
    # the budget projects the images left by their own sizes (0: unknown, the mean measured)
    budget = TimeBudget(100, [], 1, clock=SettableClock())
    budget.est = est
    assert budget.projected(Plan(), [3072**2, 0], 2) == pytest.approx(
        project(est, Plan(), [3072**2], 1) + project(est, Plan(), [1728**2], 1))


def _measured_budget(seconds: float, clock, order=("tta", "cell_view", "model:2"), feasible=lambda plan: True):
    """A budget after one image: model 1 2 s (+2 s TTA, +4 s cell views, +4 s their TTA), model 2 3 s
    (+3 s TTA), 1 s waiting for the CPU side, no caching or assembly cost."""
    budget = TimeBudget(seconds, list(order), 2, clock=clock, feasible=feasible, say=lambda text: None)
    parts = {(0, "base"): 2.0, (0, "tta"): 2.0, (0, "view"): 4.0, (0, "view_tta"): 4.0,
             (1, "base"): 3.0, (1, "tta"): 3.0}
    budget.record([1.0], [1.0], [1.0], parts, sum(parts.values()), Plan())
    return budget


def test_the_budget_drops_in_order_only_what_it_must_and_never_adds_back():
    clock = SettableClock()
    # one image done, 10 left at 19 s each (everything) = 190 s; each piece's saving per image:
    # tta 2 + 4 + 3 = 9, cell views 4, model 2 3
    budget = _measured_budget(200, clock)
    assert budget.decide([1.0] * 10, 11) == [] and budget.plan == Plan()
    clock.now = 20.0  # slower than projected: 20 + 190 > 200, dropping TTA fits (20 + 100)
    assert budget.decide([1.0] * 10, 11, "img-2") == ["tta"]
    assert budget.events[0]["from_image"] == "img-2" and budget.events[0]["projected_s"] == 210.0
    clock.now = 30.0  # faster again: TTA does not come back
    assert budget.decide([1.0] * 5, 11) == [] and budget.plan == Plan(("tta",))
    clock.now = 185.0  # 185 + 5 x 10 is over: without cell views 185 + 5 x 6 too; without model 2, 185 + 5 x 3 fits
    assert budget.decide([1.0] * 5, 11) == ["cell_view", "model:2"]
    clock.now = 250.0  # nothing left to drop: the minimum plan runs on, loudly
    said = []
    budget.say = said.append
    assert budget.decide([1.0] * 5, 11) == [] and budget.plan == Plan(("tta", "cell_view", "model:2"))
    assert "TIME BUDGET OVERRUN" in said[-1]


def test_a_piece_the_rule_needs_is_kept_and_another_order_is_followed():
    # the rule needs a cell level that only the cell views give: they stay, model 2 goes instead
    budget = _measured_budget(5, SettableClock(), order=("cell_view", "model:2"),
                              feasible=lambda plan: plan.cell_view)
    assert budget.decide([1.0] * 10, 11) == ["model:2"]
    assert "tta" not in budget.plan.dropped  # not in the order: never dropped
    assert any(note == "cell_view kept: the combination rule needs it" for _, _, note in budget.first["ladder"])


def test_the_plan_lists_as_kept_the_pieces_the_order_never_drops():
    # --budget-drop model:2 on a run with TTA and cell views: those two are kept, and the plan says so
    said = []
    budget = _measured_budget(5, SettableClock(), order=("model:2",))
    budget.pieces, budget.say = ["tta", "cell_view", "model:2"], said.append
    assert budget.decide([1.0] * 10, 11) == ["model:2"]
    keeps = next(line for line in said[0].splitlines() if line.strip().startswith("keeps:"))
    assert keeps.strip() == ("keeps: model:1, tta (not in the order: never dropped), "
                             "cell_view (not in the order: never dropped)")


# --- prediction runs under a budget (tiny models, 4 SynthHPA images, a tick clock) -----------------

def _predict(synth_dir, saved_models, out, budget=None, order=None, group=1, clock=None, weights=None):
    from hpa_tf.inference.runner import RunConfig, run

    cfg = RunConfig(data=str(synth_dir / "test"), models=saved_models, out=str(out), workers=0, tta="flip",
                    group=group, overlays=0, sample_submission=str(synth_dir / "sample_submission.csv"),
                    time_budget=budget, weights=weights, **({"budget_drop": order} if order else {}))
    return run(cfg, clock=clock or tick_clock())


def test_a_small_budget_drops_work_in_order_keeps_every_row_and_resumes(synth_dir, saved_models, tmp_path, capsys):
    sample = pd.read_csv(synth_dir / "sample_submission.csv")
    out = tmp_path / "small" / "sub.csv"
    record = _predict(synth_dir, saved_models, out, budget=1.0)["budget"]
    printed = capsys.readouterr().out
    assert "the plan" in printed and "TIME BUDGET OVERRUN" in printed and "OVER THE TIME BUDGET" in printed
    assert [e["piece"] for e in record["dropped"]] == ["tta", "cell_view", "model:2"]
    assert record["plan"]["dropped"] == ["tta", "cell_view", "model:2"] and record["overrun"]
    first, *rest = list(sample["ID"])
    assert set(record["dropped_per_image"]) == set(rest)  # the first image measured everything
    assert record["images_by_plan"] == {"everything": 1, "without tta, cell_view, model:2": len(rest)}
    assert json.loads((tmp_path / "small" / "sub.summary.json").read_text())["budget"] == record
    rows = {r.image_id: r for r in read_submission(str(out))}
    assert list(rows) == list(sample["ID"])  # every image, in the sample submission's order
    # model 2 was dropped for the other images: their rows come from model 1 alone (its CAM scores cells)
    (w, h, _, masks, scores), dropped = cache.load_with_dropped(f"{out}.cache", rest[0], 2)
    assert scores[1] is None and scores[0].cells is not None and dropped == ("tta", "cell_view", "model:2")
    row = rows[rest[0]]
    want = combine([scores[0]], len(masks), DEFAULT_RULE, [1.0])  # predict.py's default rule
    np.testing.assert_allclose(np.sort(row.confidences), np.sort(want.ravel()), rtol=1e-5)  # 6 digits in the CSV
    # the results table says so; its rows of model 2 alone have the first image only
    results = report(str(out), str(synth_dir / "truth"), str(synth_dir / "sample_submission.csv"), {},
                     str(tmp_path / "rep"))
    assert f"{len(rest)} images were scored under a time budget" in (tmp_path / "rep" / "results.md").read_text()
    assert all(0.0 <= r["mAP"] <= 1.0 for r in results.values())

    # A killed run resumed: the time spent counts, the plan goes on (no new measuring with everything)
    before, spent = out.read_text(), record["spent_s"]
    (out.parent / "sub.csv.cache" / f"{rest[-1]}.npz").unlink()
    again = _predict(synth_dir, saved_models, out, budget=1.0)["budget"]
    assert again["resumed"] and again["spent_s"] > spent
    assert [e["piece"] for e in again["dropped"]] == ["tta", "cell_view", "model:2"]  # not dropped twice
    assert cache.load_with_dropped(f"{out}.cache", rest[-1], 2)[1] == ("tta", "cell_view", "model:2")
    assert out.read_text() == before


def test_another_order_is_followed_and_unlisted_work_is_kept(synth_dir, saved_models, tmp_path):
    record = _predict(synth_dir, saved_models, tmp_path / "sub.csv", budget=1.0, order="models,cell_view")["budget"]
    assert [e["piece"] for e in record["dropped"]] == ["model:2", "cell_view"]
    assert all("tta" not in pieces for pieces in record["dropped_per_image"].values())
    # the only model with weight is never dropped: the rule would have nothing to combine
    record = _predict(synth_dir, saved_models, tmp_path / "w.csv", budget=1.0, weights=[0.0, 1.0])["budget"]
    assert [e["piece"] for e in record["dropped"]] == ["tta", "cell_view"]
    notes = [note for *_, note in record["plan"]["ladder"]]
    assert "model 2 (cells.keras) kept: the combination rule needs it" in notes


def test_a_budget_just_short_drops_only_the_first_piece_and_a_generous_one_changes_nothing(
        synth_dir, saved_models, tmp_path):
    plain = tmp_path / "plain" / "sub.csv"
    _predict(synth_dir, saved_models, plain, group=2)
    generous = tmp_path / "generous" / "sub.csv"
    record = _predict(synth_dir, saved_models, generous, budget=parse_duration("9h"), group=2)["budget"]
    assert generous.read_text() == plain.read_text()  # the same submission as without a budget
    assert record["dropped"] == [] and not record["overrun"]
    # The tick clock makes a run repeat its measures: a budget between everything and everything
    # but TTA (from the same first group) drops TTA alone for the images after it.
    (_, everything, _), (_, without_tta, _) = record["plan"]["ladder"][:2]
    assert without_tta < everything
    short = tmp_path / "short" / "sub.csv"
    record = _predict(synth_dir, saved_models, short, budget=(everything + without_tta) / 2, group=2)["budget"]
    ids = list(pd.read_csv(synth_dir / "sample_submission.csv")["ID"])
    assert [e["piece"] for e in record["dropped"]] == ["tta"]
    assert record["dropped_per_image"] == {i: ["tta"] for i in ids[2:]}
    full_rows = {r.image_id: r for r in read_submission(str(generous))}
    for row in read_submission(str(short)):
        same = np.array_equal(row.confidences, full_rows[row.image_id].confidences)
        assert same == (row.image_id in ids[:2])  # the first group was scored with TTA, the rest without
