import base64
import zlib

import cv2
import numpy as np
import pycocotools.mask as coco
import pytest

from hpa_tf.rle import MaskDecodeError, decode_mask, encode_label_image, encode_mask, mask_area_border, mask_runs
from hpa_tf.submission import ImagePrediction, SubmissionError, read_submission, write_submission

from conftest import SAMPLE_2048


def reference_encode(mask: np.ndarray) -> str:
    """The competition's published encoder, verbatim in substance."""
    m = np.asfortranarray(mask.reshape(mask.shape[0], mask.shape[1], 1).astype(np.uint8))
    counts = coco.encode(m)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, zlib.Z_BEST_COMPRESSION)).decode()


def test_byte_identical_to_pycocotools_on_random_and_edge_masks():
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.eye(6, dtype=bool), np.zeros((1, 9), bool)]
    masks[3][0, -1] = True
    for _ in range(200):
        h, w = rng.integers(1, 60, 2)
        masks.append(rng.random((h, w)) < rng.random())
    big = np.zeros((300, 200), bool)
    big[10:290, 5:195] = True  # long runs: multi-character counts and negative deltas
    masks.append(big)
    for m in masks:
        enc = encode_mask(m)
        assert enc == reference_encode(m)
        assert np.array_equal(decode_mask(enc, *m.shape), m)


def test_area_and_border_from_the_runs_equal_the_masks():
    """Prediction lowers cells cut by the image's edge: the runs must say which ones, on every side."""
    rng = np.random.default_rng(1)
    masks = []
    for _ in range(300):
        h, w = rng.integers(2, 40, 2)
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : rng.integers(y0 + 1, h + 1), x0 : rng.integers(x0 + 1, w + 1)] = True  # a box, edge or not
        masks.append(m)
    wrap = np.zeros((6, 6), bool)
    wrap[4:, 2], wrap[:2, 3] = True, True  # runs on both sides of a column break, not at the edge rows in one run
    masks += [wrap, np.zeros((4, 4), bool)]
    sides = {"top": 0, "bottom": 0, "left": 0, "right": 0}
    for m in masks:
        edge = bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        assert mask_area_border(encode_mask(m), *m.shape) == (int(m.sum()), edge)
        for side, line in (("top", m[0]), ("bottom", m[-1]), ("left", m[:, 0]), ("right", m[:, -1])):
            sides[side] += int(line.any() and m.sum() > line.sum())
    assert min(sides.values()) > 10  # every edge was touched by many masks


def test_label_image_of_real_cells_encodes_each_cell_like_the_reference():
    cells = cv2.imread(str(SAMPLE_2048 / "1000_A12_2_cellmask.png"), cv2.IMREAD_UNCHANGED)
    encoded = encode_label_image(cells)
    assert sorted(encoded) == list(range(1, int(cells.max()) + 1))
    for cid in (1, 7, int(cells.max())):
        assert encoded[cid] == reference_encode(cells == cid)
        starts, lengths = mask_runs(encoded[cid], *cells.shape)
        assert lengths.sum() == (cells == cid).sum()


def test_submission_round_trip_lists_each_mask_once_per_class(tmp_path):
    lab = np.zeros((40, 60), np.uint16)
    lab[2:20, 3:30], lab[22:38, 10:50] = 1, 2
    probs = {1: np.linspace(0, 1, 19), 2: np.full(19, 0.25)}
    pred = ImagePrediction.from_label_image("img-1", lab, probs)
    assert len(pred.masks) == 2 and pred.classes.size == 38
    empty = ImagePrediction("img-2", 60, 40)
    path = str(tmp_path / "sub.csv")
    write_submission(path, [pred, empty])
    text = (tmp_path / "sub.csv").read_text().splitlines()
    assert text[0] == "ID,ImageWidth,ImageHeight,PredictionString" and text[2] == "img-2,60,40,"
    assert text[1].count(pred.masks[0]) == 19
    back = read_submission(path, expected_ids=["img-1", "img-2"])
    assert back[0].masks == pred.masks and np.allclose(back[0].confidences, pred.confidences)
    assert np.array_equal(decode_mask(back[0].masks[1], 40, 60), lab == 2)
    assert back[1].classes.size == 0


@pytest.mark.parametrize("row, fragment", [
    ("a,60,40,0 0.5", "multiple of 3"),
    ("a,60,40,19 0.5 {m}", "out of range"),
    ("a,60,40,x 0.5 {m}", "not an integer"),
    ("a,60,40,1 high {m}", "not a number"),
    ("a,60,40,1 nan {m}", "not finite"),
    ("a,60,40,1 0.5 !!!", "bad EncodedMask"),
    ("a,61,40,1 0.5 {m}", "covers 2400 pixels"),
    ("a,sixty,40,", "not integers"),
])
def test_malformed_rows_are_named(tmp_path, row, fragment):
    m = encode_mask(np.ones((40, 60), bool))
    (tmp_path / "s.csv").write_text("ID,ImageWidth,ImageHeight,PredictionString\n" + row.format(m=m) + "\n")
    with pytest.raises(SubmissionError) as err:
        read_submission(str(tmp_path / "s.csv"))
    assert fragment in str(err.value) and "line 2" in str(err.value) and "s.csv" in str(err.value)


def test_file_level_errors(tmp_path):
    (tmp_path / "h.csv").write_text("Id,Width,Height,Pred\n")
    with pytest.raises(SubmissionError, match="header"):
        read_submission(str(tmp_path / "h.csv"))
    (tmp_path / "d.csv").write_text("ID,ImageWidth,ImageHeight,PredictionString\na,4,4,\na,4,4,\n")
    with pytest.raises(SubmissionError, match="more than once"):
        read_submission(str(tmp_path / "d.csv"))
    (tmp_path / "e.csv").write_text("ID,ImageWidth,ImageHeight,PredictionString\nb,4,4,\n")
    with pytest.raises(SubmissionError, match="1 expected IDs missing"):
        read_submission(str(tmp_path / "e.csv"), expected_ids=["a", "b"])
    with pytest.raises(MaskDecodeError):
        decode_mask(base64.b64encode(zlib.compress(b"5")).decode(), 2, 2)
