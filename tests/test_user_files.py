"""Users' own files (issue 22): upper-case extensions, channel files that are not one grey plane,
16-bit files that use a small part of their range, BOMs and swapped sizes. Every input is made here."""

import io

import cv2
import matplotlib
import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import SAMPLE_512, SAMPLE_512_ID
from hpa_tf.io import ImageReadError, probe_size, read_image, scan_image_ids
from hpa_tf.io.images import decode_channel

COLORS = ("red", "green", "blue", "yellow")


def _planes() -> list[np.ndarray]:
    return [cv2.imread(str(SAMPLE_512 / f"{SAMPLE_512_ID}_{c}.png"), cv2.IMREAD_UNCHANGED) for c in COLORS]


# --- 5. upper-case extensions --------------------------------------------------------------------

@pytest.mark.parametrize("exts", [(".TIF", ".PNG", ".Png", ".JPG"), (".tiff", ".TIFF", ".PNG", ".TIF")])
def test_upper_case_extensions_are_indexed_read_and_sized(tmp_path, exts):
    planes = _planes()
    for c, p, ext in zip(COLORS, planes, exts):
        path = tmp_path / f"a_{c}{ext}"
        if ext.lower().startswith(".tif"):
            tifffile.imwrite(path, p)
        else:
            cv2.imwrite(str(path.with_suffix(ext.lower())), p, [cv2.IMWRITE_JPEG_QUALITY, 100])
            path.with_suffix(ext.lower()).rename(path)
    assert scan_image_ids(str(tmp_path)) == ["a"]
    image = read_image(str(tmp_path), "a")
    assert image.shape == (512, 512, 4)
    assert np.array_equal(image[..., 0], planes[0])  # lossless formats read exactly
    assert probe_size(str(tmp_path), "a") == (512, 512)


# --- 6. channel files that are not one grey plane ------------------------------------------------

def _png(arr: np.ndarray) -> bytes:
    return cv2.imencode(".png", arr)[1].tobytes()


def _palette_png(index: np.ndarray, palette: np.ndarray) -> bytes:
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.astype(np.uint8).ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_colour_files_one_hue_is_reduced_to_its_plane_other_colourings_are_refused():
    green = _planes()[1]
    # HPA's codings (yellow = red + green planes) and grey RGB: the plane that carries the signal.
    yellow = np.dstack([np.zeros_like(green), green, green])  # BGR
    assert np.array_equal(decode_channel(_png(yellow), "a_yellow.png"), green)
    assert np.array_equal(decode_channel(_png(np.dstack([green] * 3)), "a_green.png"), green)
    # An opaque alpha is dropped; a varying one (an overlay) is refused.
    opaque = np.dstack([yellow, np.full_like(green, 255)])
    assert np.array_equal(decode_channel(_png(opaque), "a_yellow.png"), green)
    with pytest.raises(ImageReadError, match="a_red.png: has a varying alpha"):
        decode_channel(_png(np.dstack([yellow, green])), "a_red.png")
    # A colour map saved by a plotting library (plt.imsave spreads the data over the map): not an intensity.
    for name in ("viridis", "jet", "Greens", "cividis"):
        rgb = (matplotlib.colormaps[name](green / green.max())[..., :3] * 255).astype(np.uint8)[..., ::-1]
        with pytest.raises(ImageReadError, match="a_green.png: a colour image that is neither grey nor one of HPA"):
            decode_channel(_png(np.ascontiguousarray(rgb)), "a_green.png")


def test_a_dense_one_hue_field_reads_and_float_files_outside_0_1_are_refused(tmp_path):
    """A confluent field's colour file has a bright median, on its own hue: it is still one hue on
    black. A float file of raw counts (an ImageJ 32-bit export) is refused, not clipped."""
    rng = np.random.default_rng(0)
    dense = np.clip(rng.normal(90, 30, (64, 64)), 0, 255).astype(np.uint8)
    assert np.median(dense) > 0.1 * 255
    yellow = np.dstack([np.zeros_like(dense), dense, dense])  # BGR
    assert np.array_equal(decode_channel(_png(yellow), "a_yellow.png"), dense)
    path = tmp_path / "f_red.tif"
    tifffile.imwrite(path, dense.astype(np.float32) * 100)
    with pytest.raises(ImageReadError, match="f_red.tif: floating-point values from .* must hold intensities in"):
        decode_channel(path.read_bytes(), str(path))


def test_palette_png_grey_or_one_hue_gives_its_values_a_colour_map_is_refused():
    blue = _planes()[2]
    ramp = np.arange(256)
    grey = np.stack([ramp] * 3, -1)
    assert np.array_equal(decode_channel(_palette_png(blue, grey), "a_blue.png"), blue)
    green_ramp = np.stack([0 * ramp, ramp, 0 * ramp], -1)
    assert np.array_equal(decode_channel(_palette_png(blue, green_ramp), "a_blue.png"), blue)
    viridis = (matplotlib.colormaps["viridis"](ramp / 255.0)[:, :3] * 255).round()
    with pytest.raises(ImageReadError, match="a_blue.png: a colour image"):
        decode_channel(_palette_png(blue, viridis), "a_blue.png")


def test_multi_page_tiffs_stacks_and_animated_png_are_refused_in_one_line(tmp_path):
    blue = _planes()[2]
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:  # two pages, written one by one
        tif.write(blue)
        tif.write(blue // 2)
    with pytest.raises(ImageReadError, match=r"a_blue.tif: a TIFF of 2 pages/planes .*maximum projection"):
        decode_channel(buf.getvalue(), "a_blue.tif")
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.stack([blue] * 5), metadata={"axes": "ZYX"})  # a z-stack
    with pytest.raises(ImageReadError, match="a_blue.tif: a TIFF of 5 pages/planes"):
        decode_channel(buf.getvalue(), "a_blue.tif")
    frames = [Image.fromarray(blue), Image.fromarray(blue // 2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="a_blue.png: an animated PNG of 2 frames"):
        decode_channel(buf.getvalue(), "a_blue.png")
    # One page of colour samples (RGB TIFF) follows the colour rule.
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.dstack([np.zeros_like(blue), np.zeros_like(blue), blue]), photometric="rgb")
    assert np.array_equal(decode_channel(buf.getvalue(), "a_blue.tif"), blue)


def test_a_file_is_decoded_by_its_content_not_its_name():
    red = _planes()[0]
    jpeg = cv2.imencode(".jpg", np.dstack([np.zeros_like(red), np.zeros_like(red), red]),
                        [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    plane = decode_channel(jpeg, "a_red.png")  # the HPA website's colour "PNGs" are JPEGs
    assert np.abs(plane.astype(int) - red).mean() < 4  # JPEG (chroma subsampling) keeps it close


# --- 7. gzip records, BOM, swapped sizes ---------------------------------------------------------

def test_the_docs_one_liner_reads_gzip_shards(synth_dir, tmp_path):
    import re
    from pathlib import Path

    import tensorflow as tf

    from hpa_tf.data.schema import parse_image_record, record_dataset
    from tfrecord_builder.__main__ import main as build

    out = str(tmp_path / "gz")
    assert build(["build", "--data", str(synth_dir / "train"), "--labels", str(synth_dir / "train.csv"), "--out", out,
                  "--image-size", "32", "--cell-size", "16", "--folds", "2", "--compression", "gzip"]) == 0
    page = (Path(__file__).parent.parent / "docs" / "tfrecords.md").read_text()
    line = re.search(r"`([^`]*map\(parse_image_record\))`", page).group(1)
    ds = eval(line, {"tf": tf, "OUT": out, "record_dataset": record_dataset, "parse_image_record": parse_image_record})
    first = next(iter(ds))
    assert first["image"].shape == (32, 32, 4)


def _cells(h: int, w: int) -> np.ndarray:
    lab = np.zeros((h, w), np.uint16)
    cv2.circle(lab, (w // 3, h // 2), min(h, w) // 5, 1, -1)
    cv2.ellipse(lab, (2 * w // 3, h // 3), (w // 8, h // 6), 30, 0, 360, 2, -1)
    return lab


def test_read_submission_accepts_a_bom_and_refuses_swapped_sizes(tmp_path):
    from hpa_tf.submission import ImagePrediction, SubmissionError, format_submission, parse_row, read_submission

    pred = ImagePrediction.from_label_image("a", _cells(60, 100), {1: np.eye(19)[3], 2: np.eye(19)[5]})
    text = format_submission([pred])
    path = tmp_path / "sub.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's UTF-8 with a byte-order mark
    assert read_submission(str(path))[0].width == 100
    assert read_submission(str(path), sizes={"a": (100, 60)})[0].height == 60
    with pytest.raises(SubmissionError, match="swapped: the sample submission's 60x100"):
        read_submission(str(path), sizes={"a": (60, 100)})
    with pytest.raises(SubmissionError, match="differ from the sample submission's 200x120"):
        read_submission(str(path), sizes={"a": (200, 120)})
    row = text.splitlines()[1].split(",")
    with pytest.raises(SubmissionError, match="ImageWidth and ImageHeight \\(60x100\\) are swapped"):
        parse_row([row[0], row[2], row[1], row[3]], "line 2")  # no sample submission: the masks tell
    assert parse_row(row, "line 2").width == 100


# --- 3. 16-bit files that use a small part of 0..65535 --------------------------------------------

def _write_field(folder, image_id: str, planes, kind: str) -> None:
    folder.mkdir(exist_ok=True)
    for c, p in zip(COLORS, planes):
        if kind == "tif":
            tifffile.imwrite(folder / f"{image_id}_{c}.tif", p)
        else:
            cv2.imwrite(str(folder / f"{image_id}_{c}.png"), p)


def test_dim_and_offset_16bit_files_segment_as_well_as_8bit_from_disk(tmp_path):
    """A field stored as 0..1020 in 16-bit files (a 10-bit camera), one with an offset of 3000, and
    the real dim 16-bit nuclei (values 0..235) read from disk: the segmentation CLI finds what it
    finds in the 8-bit files (0 of 38 cells and none of the nuclei before)."""
    from conftest import REAL_NUCLEI
    from hpa_tf.segmentation import read_masks
    from hpa_tf.segmentation.__main__ import main as segment
    from hpa_tf.segmentation.quality import match_quality

    planes = _planes()
    data = tmp_path / "data"
    _write_field(data, "f8", planes, "png")
    _write_field(data, "f10", [p.astype(np.uint16) * 4 for p in planes], "tif")
    _write_field(data, "foffset", [p.astype(np.uint16) * 4 + 3000 for p in planes], "png")
    nuclei, truth = tifffile.imread(REAL_NUCLEI / "nuclei.tif"), tifffile.imread(REAL_NUCLEI / "nuclei_mask.tif")
    big = cv2.resize(nuclei, (nuclei.shape[1] * 4, nuclei.shape[0] * 4), interpolation=cv2.INTER_LINEAR)
    assert big.dtype == np.uint16 and big.max() < 256
    _write_field(data, "nuclei", [np.zeros_like(big), np.zeros_like(big), big, np.zeros_like(big)], "tif")
    assert segment(["--data", str(data), "--out", str(tmp_path / "masks")]) == 0
    ref = read_masks(str(tmp_path / "masks"), "f8")
    assert ref.n_cells >= 10
    for image_id in ("f10", "foffset"):
        q = match_quality(ref.cells, read_masks(str(tmp_path / "masks"), image_id).cells)
        assert q.recall >= 0.9 and q.precision >= 0.9, (image_id, q)
    found = read_masks(str(tmp_path / "masks"), "nuclei").nuclei
    q = match_quality(truth, cv2.resize(found, truth.shape[::-1], interpolation=cv2.INTER_NEAREST))
    assert q.recall >= 0.85 and q.precision >= 0.85, q
    overlay = cv2.imread(str(tmp_path / "masks" / "f10_overlay.png"))
    assert overlay.mean() > 5  # the dim field is visible in its overlay (stretched to its range)


def test_a_16bit_record_set_keeps_the_precision_and_its_contract_says_so(tmp_path):
    import pandas as pd
    import tensorflow as tf

    from hpa_tf.data.contract import InputContract, to_model_size
    from hpa_tf.data.schema import parse_cell_record, record_dataset
    from tfrecord_builder.__main__ import main as build

    planes = [p.astype(np.uint16) * 4 for p in _planes()]  # 0..1020
    data = tmp_path / "data"
    _write_field(data, "f10", planes, "tif")
    _write_field(data, "g10", [np.ascontiguousarray(p[::-1]) for p in planes], "tif")
    pd.DataFrame({"ID": ["f10", "g10"], "Label": ["0", "5"]}).to_csv(tmp_path / "train.csv", index=False)
    out = {}
    for depth in ("8", "16"):
        out[depth] = str(tmp_path / f"rec{depth}")
        assert build(["build", "--data", str(data), "--labels", str(tmp_path / "train.csv"), "--out", out[depth],
                      "--image-size", "64", "--cell-size", "32", "--folds", "2", "--bit-depth", depth]) == 0
    crops = {}
    for depth, folder in out.items():
        ex = next(iter(record_dataset(tf.io.gfile.glob(folder + "/cells-*.tfrec")).map(parse_cell_record)))
        dtype = tf.uint16 if depth == "16" else tf.uint8
        crops[depth] = tf.io.decode_png(ex["cells"][0], channels=4, dtype=dtype).numpy()
    assert crops["8"].max() <= 4  # 0..1020 of 65535: 8-bit records keep almost nothing
    assert crops["16"].max() > 255 and len(np.unique(crops["16"])) > 50 * len(np.unique(crops["8"]))
    model_in = {d: to_model_size(c[None], 32).numpy() for d, c in crops.items()}
    assert np.abs(model_in["16"] - model_in["8"]).max() <= 1 / 255  # the same pixels, finer steps
    config = {"data": {"records": out["16"], "image_size": 64, "cell_size": 32}, "model": {"kind": "cell"}}
    assert InputContract.from_config(config).bit_depth == 16


# --- 4. the official segmenter's size rules on downsized fields ------------------------------------

def _disc_field(side: int) -> np.ndarray:
    """16 separate cells of a 2048 px field (cell radius 180, nucleus 60 px there) drawn at ``side`` px."""
    z = side / 2048
    cell, nucleus = np.zeros((side, side), np.uint8), np.zeros((side, side), np.uint8)
    for y in range(4):
        for x in range(4):
            centre = (int((256 + 512 * x) * z), int((256 + 512 * y) * z))
            cv2.circle(cell, centre, int(180 * z), 200, -1)  # microtubules and ER: the cell
            cv2.circle(nucleus, centre, int(60 * z), 200, -1)
    return np.dstack([cell, np.zeros_like(cell), nucleus, cell])


def _fake_forward(kind: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Network outputs without the networks: the interior class where the input channel is bright."""
    out = []
    for x in inputs:  # the networks' inputs in [0, 1] (they normalise them themselves)
        interior = (x[..., 0] > 0.4).astype(np.float32)
        out.append(np.dstack([1 - interior, np.zeros_like(interior), interior]))
    return out


@pytest.mark.parametrize("side", [512, 1024, 2048])
def test_official_post_processing_keeps_the_cells_of_a_downsized_field(side, monkeypatch):
    """The official rules are pixel counts for ~2048 px fields: a 512 px copy kept 0 of the cells and a
    1024 px one lost some. The networks now see the field at their resolution and the rules scale with it."""
    from hpa_tf.segmentation.hpacellseg import HPACellSegSegmenter

    seg = HPACellSegSegmenter("n.pth", "c.pth", device="cpu")
    monkeypatch.setattr(seg, "_forward", _fake_forward)
    out = seg.segment([_disc_field(side)])[0]
    assert out.cells.shape == (side, side)
    assert out.n_cells == 16 and int(out.nuclei.max()) == 16
    z = side / 2048
    areas = np.bincount(out.cells.ravel())[1:]
    assert np.all(np.abs(areas / (np.pi * (180 * z) ** 2) - 1) < 0.15)  # whole cells, not fragments
    # saying the field's full size explicitly gives the same cells
    explicit = HPACellSegSegmenter("n.pth", "c.pth", device="cpu", field_side=2048)
    monkeypatch.setattr(explicit, "_forward", _fake_forward)
    assert explicit.segment([_disc_field(side)])[0].n_cells == 16
