import gzip

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tifffile

from hpa_tf.io import (
    ImageReadError, LabelTableError, index_dataset, read_image, read_label_table, scan_image_ids, to_uint8,
)
from hpa_tf.labels import LabelError

from conftest import SAMPLE_2048, SAMPLE_512, SAMPLE_512_ID

COLORS = ("red", "green", "blue", "yellow")


def _sample_planes():
    return [cv2.imread(str(SAMPLE_512 / f"{SAMPLE_512_ID}_{c}.png"), cv2.IMREAD_UNCHANGED) for c in COLORS]


def test_real_8bit_sample_in_rgby_order():
    img = read_image(str(SAMPLE_512), SAMPLE_512_ID)
    assert img.shape == (512, 512, 4) and img.dtype == np.uint8
    for k, plane in enumerate(_sample_planes()):
        assert np.array_equal(img[..., k], plane)
    flt = read_image(str(SAMPLE_512), SAMPLE_512_ID, dtype="float32")
    assert np.allclose(flt * 255, img, atol=1e-3)
    assert read_label_table(str(SAMPLE_512 / "train.csv"))["labels"].tolist() == [[5]]  # 2018 form


def test_real_16bit_channel_one_rule(tmp_path):
    green16 = cv2.imread(str(SAMPLE_2048 / "1000_A12_2_green.png"), cv2.IMREAD_UNCHANGED)
    assert green16.dtype == np.uint16 and green16.shape == (2048, 2048)
    mask16 = cv2.imread(str(SAMPLE_2048 / "1000_A12_2_cellmask.png"), cv2.IMREAD_UNCHANGED)
    for c in COLORS:
        plane = green16 if c == "green" else (mask16 * 3000).astype(np.uint16)
        cv2.imwrite(str(tmp_path / f"f_{c}.png"), plane)
    img8 = read_image(str(tmp_path), "f")
    flt = read_image(str(tmp_path), "f", dtype="float32")
    assert np.array_equal(img8[..., 1], to_uint8(green16))
    assert np.allclose(flt[..., 1], green16 / 65535.0, atol=1e-6)
    # the rule: value / 65535 -> x 255, rounded
    assert np.array_equal(img8[..., 1], np.rint(green16 / 65535.0 * 255).astype(np.uint8))
    assert to_uint8(np.array([65535, 32896, 128], np.uint16)).tolist() == [255, 128, 0]


def test_tif_tifgz_jpg_and_colour_coded(tmp_path):
    planes = _sample_planes()
    for c, p in zip(COLORS, planes):
        tifffile.imwrite(tmp_path / f"t_{c}.tif", p.astype(np.uint16) * 257)
        (tmp_path / f"z_{c}.tif.gz").write_bytes(gzip.compress((tmp_path / f"t_{c}.tif").read_bytes()))
        cv2.imwrite(str(tmp_path / f"j_{c}.jpg"), p, [cv2.IMWRITE_JPEG_QUALITY, 95])
        rgb = np.zeros(p.shape + (3,), np.uint8)
        rgb[..., {"red": 2, "green": 1, "blue": 0, "yellow": 1}[c]] = p  # coloured like the HPA website's JPEGs
        cv2.imwrite(str(tmp_path / f"c_{c}.png"), rgb)
    want = np.stack(planes, -1)
    assert np.array_equal(read_image(str(tmp_path), "t"), want)
    assert np.array_equal(read_image(str(tmp_path), "z"), want)
    assert np.array_equal(read_image(str(tmp_path), "c"), want)
    jpg = read_image(str(tmp_path), "j").astype(int)
    assert np.abs(jpg - want).mean() < 2.0


def _write_set(d, image_id="x"):
    for c, p in zip(COLORS, _sample_planes()):
        cv2.imwrite(str(d / f"{image_id}_{c}.png"), p)


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "no yellow channel"),
    ("empty", "empty"),
    ("truncated", "truncated PNG"),
    ("garbage", "not a PNG"),
    ("size", "channels differ in size"),
])
def test_bad_inputs_are_clear_errors(tmp_path, damage, fragment):
    _write_set(tmp_path)
    target = tmp_path / "x_yellow.png"
    data = target.read_bytes()
    if damage == "missing":
        target.unlink()
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        target.write_bytes(b"hello" * 100)
    elif damage == "size":
        cv2.imwrite(str(target), np.zeros((256, 512), np.uint8))
    with pytest.raises(ImageReadError) as err:
        read_image(str(tmp_path), "x")
    msg = str(err.value)
    assert fragment in msg and ("x_yellow" in msg or "'x'" in msg), msg


def test_nan_float_tiff_is_an_error(tmp_path):
    _write_set(tmp_path)
    bad = np.zeros((512, 512), np.float32)
    bad[3, 4] = np.nan
    (tmp_path / "x_green.png").unlink()
    tifffile.imwrite(tmp_path / "x_green.tif", bad)
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(str(tmp_path), "x")


def test_reading_through_gfile_ram_filesystem():
    root = "ram://hpa_io_test"
    for c in COLORS:
        with tf.io.gfile.GFile(f"{root}/{SAMPLE_512_ID}_{c}.png", "wb") as f:
            f.write((SAMPLE_512 / f"{SAMPLE_512_ID}_{c}.png").read_bytes())
    assert np.array_equal(read_image(root, SAMPLE_512_ID), read_image(str(SAMPLE_512), SAMPLE_512_ID))


def test_label_tables_in_three_layouts(tmp_path):
    (tmp_path / "train.csv").write_text("ID,Label\na,0|5\nb,18\n")
    (tmp_path / "old.csv").write_text("Id,Target\na,0 5\n")
    (tmp_path / "kaggle_2021.tsv").write_text(
        "Image\tCellline\tin_trainset\tLabel\tLabel_idx\n"
        "https://images.proteinatlas.org/10005/921_B9_1\tA-431\tFalse\tCytosol\t16\n"
        "https://images.proteinatlas.org/10005/921_B9_2\tU-2 OS\tTrue\tNucleoplasm,Cytosol\t0|16\n"
    )
    new = read_label_table(str(tmp_path / "train.csv"))
    assert new["ID"].tolist() == ["a", "b"] and new["labels"].tolist() == [[0, 5], [18]]
    assert read_label_table(str(tmp_path / "old.csv"))["Label"].tolist() == ["0|5"]
    ext = read_label_table(str(tmp_path / "kaggle_2021.tsv"))
    assert ext["ID"].tolist() == ["10005_921_B9_1", "10005_921_B9_2"]
    assert ext["labels"].tolist() == [[16], [0, 16]] and ext["Cellline"].tolist() == ["A-431", "U-2 OS"]

    (tmp_path / "bad.csv").write_text("ID,Label\na,0|5\nb,0|42\n")
    with pytest.raises(LabelError, match="ID b"):
        read_label_table(str(tmp_path / "bad.csv"))
    (tmp_path / "hdr.csv").write_text("Name,Classes\na,1\n")
    with pytest.raises(LabelTableError, match="unknown header"):
        read_label_table(str(tmp_path / "hdr.csv"))
    (tmp_path / "dup.csv").write_text("ID,Label\na,1\na,2\n")
    with pytest.raises(LabelTableError, match="more than once"):
        read_label_table(str(tmp_path / "dup.csv"))


def test_2018_labels_are_mapped_by_class(tmp_path):
    (tmp_path / "train.csv").write_text("Id,Target\na,8 25\nb,11\nc,27\nd,19 18 22 0\ne,16 27\n")
    table = read_label_table(str(tmp_path / "train.csv"))
    # Peroxisomes -> Vesicles, Cytosol 25 -> 16; Intermediate filaments 11 -> 8; Rods & rings: no 2021 class
    assert table["ID"].tolist() == ["a", "b", "d"]
    assert table["labels"].tolist() == [[16, 17], [8], [0, 12, 13]]
    assert table["Label_2018"].tolist() == ["8 25", "11", "19 18 22 0"]
    report = table.attrs["label_report"]
    assert "Rods & rings (27) x 2" in report and "Cytokinetic bridge (16) x 1" in report and "2 image(s)" in report
    assert read_label_table(str(SAMPLE_512 / "train.csv"))["labels"].tolist() == [[5]]  # Nuclear bodies in both
    (tmp_path / "new.csv").write_text("ID,Label\na,8\n")  # a 2021 table keeps its ids
    assert read_label_table(str(tmp_path / "new.csv"))["labels"].tolist() == [[8]]
    assert read_label_table(str(tmp_path / "new.csv"), classes="2018")["labels"].tolist() == [[17]]
    (tmp_path / "bad.csv").write_text("Id,Target\na,28\n")
    with pytest.raises(LabelError, match="ID a.*0..27"):
        read_label_table(str(tmp_path / "bad.csv"))


def test_scan_folder_without_csv(tmp_path):
    _write_set(tmp_path, "one")
    _write_set(tmp_path, "two")
    (tmp_path / "two_blue.png").unlink()  # incomplete images are not listed
    assert scan_image_ids(str(tmp_path)) == ["one"]
    assert index_dataset(str(tmp_path))["ID"].tolist() == ["one"]
