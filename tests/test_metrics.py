import numpy as np
import pandas as pd
import pytest

from hpa_tf.metrics import average_precision, evaluate, main
from hpa_tf.rle import encode_mask
from hpa_tf.submission import ImagePrediction, SubmissionError
from hpa_tf.truth import Truth, write_cell_mask

H, W = 40, 60


def make_truth(tmp_path, images: dict[str, tuple[np.ndarray, dict[int, list[int]]]]) -> Truth:
    for image_id, (lab, _) in images.items():
        write_cell_mask(str(tmp_path), image_id, lab)
    table = pd.DataFrame({
        "ID": list(images), "split": "test", "ImageWidth": W, "ImageHeight": H,
        "labels": [sorted({c for ls in cells.values() for c in ls}) for _, cells in images.values()],
    })
    return Truth(str(tmp_path), table, {i: cells for i, (_, cells) in images.items()})


def two_cells() -> np.ndarray:
    lab = np.zeros((H, W), np.uint16)
    lab[0:20, 0:30] = 1  # 600 px
    lab[20:40, 30:60] = 2  # 600 px
    return lab


def dets(image_id: str, items: list[tuple[int, float, np.ndarray]]) -> ImagePrediction:
    masks = [encode_mask(m) for _, _, m in items]
    uniq = list(dict.fromkeys(masks))
    return ImagePrediction(
        image_id, W, H, uniq,
        np.array([c for c, _, _ in items]), np.array([s for _, s, _ in items], float),
        np.array([uniq.index(m) for m in masks]),
    )


def test_duplicate_is_a_false_positive_and_a_miss_lowers_recall(tmp_path):
    lab = two_cells()
    truth = make_truth(tmp_path, {"a": (lab, {1: [0], 2: [0]})})
    # cell 1 found (TP), then listed again (duplicate -> FP); cell 2 never found.
    res = evaluate(truth, [dets("a", [(0, 0.9, lab == 1), (0, 0.8, lab == 1)])])
    # thresholds: 0.9 -> P 1, R 0.5 ; 0.8 -> P 0.5, R 0.5  => AP = 0.5 * 1
    assert res.ap[0] == pytest.approx(0.5) and res.n_tp[0] == 1 and res.n_det[0] == 2
    assert res.map == pytest.approx(0.5)  # only class 0 has ground truth


def test_iou_threshold_and_wrong_class(tmp_path):
    lab = two_cells()
    truth = make_truth(tmp_path, {"a": (lab, {1: [0], 2: [5]})})
    loose = lab == 1
    loose[20:24, 0:30] = True  # 720 px, IoU 600/720 = 0.83 -> TP
    too_big = lab == 2
    too_big[0:20, 30:60] = True  # IoU 600/1200 = 0.5 -> FP
    res = evaluate(truth, [dets("a", [(0, 0.7, loose), (5, 0.9, too_big), (3, 0.9, lab == 2)])])
    assert res.ap[0] == pytest.approx(1.0)
    assert res.ap[5] == pytest.approx(0.0) and res.n_det[5] == 1
    assert np.isnan(res.ap[3]) and res.n_det[3] == 1  # no ground truth for class 3: not in the mean
    assert res.map == pytest.approx(0.5)


def test_ties_form_one_step_whatever_the_row_order(tmp_path):
    lab = two_cells()
    truth = make_truth(tmp_path, {"a": (lab, {1: [2], 2: [2]}), "b": (lab, {1: [2], 2: [7]})})
    good = dets("a", [(2, 0.5, lab == 1)])  # TP
    bad = dets("b", [(2, 0.5, lab == 2)])  # FP: cell 2 of b is class 7
    # pooled at 0.5: 1 TP + 1 FP, n_gt 3 -> P 0.5, R 1/3 -> AP 1/6, in either order
    for order in ([good, bad], [bad, good]):
        assert evaluate(truth, order).ap[2] == pytest.approx(1 / 6)
    assert average_precision(np.array([0.5, 0.5]), np.array([False, True]), 1) == pytest.approx(0.5)


def test_perfect_and_empty_submissions(tmp_path):
    lab = two_cells()
    truth = make_truth(tmp_path, {"a": (lab, {1: [0, 16], 2: [18]})})
    perfect = dets("a", [(0, 1.0, lab == 1), (16, 1.0, lab == 1), (18, 1.0, lab == 2)])
    assert evaluate(truth, [perfect]).map == 1.0
    assert evaluate(truth, []).map == 0.0
    assert evaluate(truth, [ImagePrediction("a", W, H)]).map == 0.0
    with pytest.raises(SubmissionError, match="not in the truth"):
        evaluate(truth, [ImagePrediction("zzz", W, H)])
    with pytest.raises(SubmissionError, match="60x40"):
        evaluate(truth, [ImagePrediction("a", W + 1, H, perfect.masks[:1], np.array([0]), np.array([1.0]), np.array([0]))])


# ---- against a literal, slow reference (OpenImages' own precision/recall/AP code) -------------

def _oi_ap(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    order = np.argsort(scores)[::-1]
    tpl = tp[order].astype(float)
    ctp, cfp = np.cumsum(tpl), np.cumsum(1 - tpl)
    precision = ctp / (ctp + cfp)
    recall = ctp / num_gt
    recall = np.concatenate([[0], recall, [1]])
    precision = np.concatenate([[0], precision, [0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    idx = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[idx] - recall[idx - 1]) * precision[idx]))


def _naive_map(images, preds) -> float:
    pooled = {c: ([], []) for c in range(19)}
    n_gt = np.zeros(19, int)
    for image_id, (lab, cells) in images.items():
        for labs in cells.values():
            n_gt[labs] += 1
        for c in range(19):
            mine = sorted([d for d in preds.get(image_id, []) if d[0] == c], key=lambda d: -d[1])
            gts = [g for g, labs in cells.items() if c in labs]
            matched = set()
            for _, conf, m in mine:
                ious = [((m & (lab == g)).sum() / (m | (lab == g)).sum()) for g in gts]
                ok = False
                if ious:
                    j = int(np.argmax(ious))
                    if ious[j] >= 0.6 and gts[j] not in matched:
                        matched.add(gts[j])
                        ok = True
                pooled[c][0].append(conf)
                pooled[c][1].append(ok)
    aps = [_oi_ap(np.array(pooled[c][0]), np.array(pooled[c][1]), n_gt[c]) if pooled[c][0] else 0.0
           for c in range(19) if n_gt[c]]
    return float(np.mean(aps))


def test_matches_a_literal_reference_on_random_cases(tmp_path):
    rng = np.random.default_rng(7)
    for trial in range(6):
        images, preds = {}, {}
        confs = iter(rng.permutation(10_000) / 10_000 + 1e-4)  # distinct: ties cannot matter
        for k in range(4):
            lab = np.zeros((H, W), np.uint16)
            cells = {}
            for cid, (y, x) in enumerate([(0, 0), (0, 30), (20, 0), (20, 30)], start=1):
                if rng.random() < 0.8:
                    lab[y : y + 20, x : x + 30] = cid
                    cells[cid] = sorted(rng.choice(4, size=rng.integers(1, 3), replace=False).tolist())
            images[f"i{k}"] = (lab, cells)
            items = []
            for cid in cells:
                for _ in range(rng.integers(0, 3)):  # duplicates too
                    m = np.roll(lab == cid, rng.integers(-9, 10), axis=1)  # IoU from ~0.4 to 1
                    items.append((int(rng.integers(0, 4)), float(next(confs)), m))
            if rng.random() < 0.5:
                junk = np.zeros((H, W), bool)
                junk[5:15, 5:50] = True
                items.append((int(rng.integers(0, 4)), float(next(confs)), junk))
            preds[f"i{k}"] = items
        truth = make_truth(tmp_path / f"t{trial}", images)
        got = evaluate(truth, [dets(i, items) for i, items in preds.items() if items]).map
        assert got == pytest.approx(_naive_map(images, preds), abs=1e-12)


def test_cli_prints_table_and_map_last(synth_dir, tmp_path, capsys):
    from hpa_tf.baselines import main as baseline

    sub = str(tmp_path / "perfect.csv")
    assert baseline(["--data", str(synth_dir), "--split", "test", "--kind", "perfect", "--out", sub]) == 0
    assert main(["--truth", str(synth_dir / "truth"), "--split", "test", "--submission", sub, "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "mAP 1.0000" and any(line.startswith(" 0  Nucleoplasm") for line in out)
    assert (tmp_path / "r.json").exists()
