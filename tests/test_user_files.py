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

def test_readme_one_liner_reads_gzip_shards(synth_dir, tmp_path):
    import re
    from pathlib import Path

    import tensorflow as tf

    from hpa_tf.data.schema import parse_image_record, record_dataset
    from tfrecord_builder.__main__ import main as build

    out = str(tmp_path / "gz")
    assert build(["build", "--data", str(synth_dir / "train"), "--labels", str(synth_dir / "train.csv"), "--out", out,
                  "--image-size", "32", "--cell-size", "16", "--folds", "2", "--compression", "gzip"]) == 0
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    line = re.search(r"`([^`]*map\(parse_image_record\))`", readme).group(1)
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
