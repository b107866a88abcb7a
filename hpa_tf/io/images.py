"""Read one HPA image: four single-channel files -> an HxWx4 array (red, green, blue, yellow).

Formats: ``.png`` (8- or 16-bit), ``.tif``/``.tiff`` (16-bit or float), ``.tif.gz`` (the external
data's full-resolution files) and ``.jpg``, in any letter case (``_red.TIF``, ``.Png``).

A channel file must hold one grey plane. The rules for files that do not (:func:`decode_channel`):
- **colour (RGB) and palette files**: a palette is expanded to its colours first. A file that is
  grey, or one hue on black (HPA's colour codings: red, green, blue or yellow on black, as the
  website's JPEGs), is reduced to the maximum over its colours (the plane that carries the
  signal). Any other colouring is refused: a background that is not black (viridis, jet, an
  inverted white-to-colour map) or colours that turn more than 18 degrees from dim to bright (a
  composite of several stains, a colour map used over its range). A colour map that starts at
  black and stays one hue over the range a file uses (``hot`` or ``magma`` on a dim field) is
  taken as that hue's plane.
- **alpha**: an opaque (constant) alpha is dropped; a varying alpha (an overlay) is refused.
- **several pages, frames or planes** (a multi-page or 3-D TIFF stack, an animated PNG) are
  refused: save the one plane you mean (for a z-stack, e.g. its maximum projection).

The one rule for bit depths: a pixel's intensity is ``value / max(dtype)``, so 8-bit 255 and
16-bit 65535 are both 1.0. ``read_image(..., dtype="uint8")`` rounds that to 0..255 (the storage
and model-input convention of hpa-tf: the model divides by 255); ``dtype="float32"`` keeps the
full precision of 16-bit files in [0, 1]; ``dtype="native"`` keeps the files' own integers (uint8 or
uint16), which is what the segmenters get: a 16-bit file that uses a small part of 0..65535 (a 12-bit
camera, a dim stain) keeps every intensity step. :func:`to_8bit_view` is the 8-bit picture of such
a channel for the consumers that need 8 bits (the official segmentation networks, overlays).
"""

from __future__ import annotations

import gzip
import io as _io
import time
import zlib
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import tifffile

from hpa_tf import fs

CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff", ".tif.gz", ".jpg", ".jpeg")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_last_ext: dict[str, str] = {}
_listings: dict[str, tuple[float, dict[str, str]]] = {}
_LISTING_TTL_S = 10.0
BACKGROUND_MAX = 0.1  # colour files: a median colour brighter than this share of full scale is not "on black"
HUE_TOLERANCE = 18.0  # degrees: colour files further from one hue are refused (HPA JPEGs <= 16, colour maps >= 19)


class ImageReadError(IOError):
    """A channel file that is missing, empty, truncated, undecodable or inconsistent."""


def _listing(data_dir: str, max_age_s: float = _LISTING_TTL_S) -> dict[str, str]:
    """Lower-case name -> name of the files of a folder, listed again when older than ``max_age_s``."""
    now = time.monotonic()
    cached = _listings.get(data_dir)
    if cached is None or now - cached[0] > max_age_s:
        try:
            names = fs.listdir(data_dir)
        except Exception:  # noqa: BLE001 - a missing folder has no files
            names = []
        cached = (now, {n.lower(): n for n in names})
        _listings[data_dir] = cached
    return cached[1]


def image_extension(name: str) -> str | None:
    """The image extension a file name ends with, in any letter case, as written; else None.

    >>> image_extension("a_red.TIF"), image_extension("a.csv")
    ('.TIF', None)
    """
    lower = name.lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext) and not (ext == ".tif" and lower.endswith(".tif.gz")):
            return name[len(name) - len(ext):]
    return None


def find_channel(data_dir: str, image_id: str, color: str) -> str | None:
    """The path of one channel file in any of the formats and any letter case of its extension
    (``_red.png``, ``_red.TIF``, ``_red.Png``), or None when there is none.

    >>> find_channel("data/train", "abc", "red")  # doctest: +SKIP
    'data/train/abc_red.png'
    """
    stem = f"{image_id}_{color}"
    # Datasets use one extension throughout: try the last one that worked first.
    first = _last_ext.get(data_dir)
    order = ([first] if first else []) + [e for e in EXTENSIONS if e != first]
    for candidate in order:
        path = fs.join(data_dir, stem + candidate)
        if fs.exists(path):
            _last_ext[data_dir] = candidate
            return path
    for max_age in (_LISTING_TTL_S, 1.0):  # a miss in an older listing: list again (files may be new)
        listing = _listing(data_dir, max_age)
        for ext in EXTENSIONS:  # upper- or mixed-case extensions, as some imagers write them
            name = listing.get((stem + ext).lower())
            if name is not None and name.startswith(stem):
                _last_ext[data_dir] = name[len(stem):]
                return fs.join(data_dir, name)
    return None


def channel_path(data_dir: str, image_id: str, color: str, ext: str | None = None) -> str:
    """Path of one channel file; with ``ext=None`` the extensions are probed (any letter case).

    >>> channel_path("data/train", "abc", "red", ext=".png")
    'data/train/abc_red.png'
    """
    if ext is not None:
        return fs.join(data_dir, f"{image_id}_{color}{ext}")
    path = find_channel(data_dir, image_id, color)
    if path is None:
        raise ImageReadError(
            f"image {image_id!r}: no {color} channel in {data_dir!r} "
            f"(looked for {image_id}_{color} with {', '.join(EXTENSIONS)}, any letter case); "
            "every image needs _red, _green, _blue and _yellow files"
        )
    return path


def has_any_channel(data_dir: str, image_id: str) -> bool:
    """Whether any channel file of an image exists, in any of the formats.

    >>> has_any_channel("data/train", "abc")  # doctest: +SKIP
    True
    """
    return any(find_channel(data_dir, image_id, c) is not None for c in CHANNELS)


def _header_size(data: bytes, lower: str) -> tuple[int, int] | None:
    """(width, height) from a file's header alone, which survives truncation."""
    if lower.endswith(".gz"):
        data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 1 << 16)  # the start is enough
        lower = lower[:-3]
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(b"\xff\xd8"):
        k = 2
        while k + 9 < len(data) and data[k] == 0xFF:
            marker, length = data[k + 1], int.from_bytes(data[k + 2 : k + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2):  # start of frame: height, then width
                return int.from_bytes(data[k + 7 : k + 9], "big"), int.from_bytes(data[k + 5 : k + 7], "big")
            k += 2 + length
        return None
    if lower.endswith((".tif", ".tiff")):
        with tifffile.TiffFile(_io.BytesIO(data)) as tif:
            shape = tif.pages[0].shape
        return int(shape[1]), int(shape[0])
    return None


def probe_size(data_dir: str, image_id: str) -> tuple[int, int] | None:
    """(width, height) of an image from the header of any of its channel files (a damaged image
    still gets its true size in a submission), or None when no file says.

    >>> probe_size("data/test", "abc")  # doctest: +SKIP
    (2048, 2048)
    """
    for color in CHANNELS:
        path = find_channel(data_dir, image_id, color)
        if path is None:
            continue
        try:
            with fs.open_read(path) as f:  # the header only: a whole 2048 px TIFF per image adds up
                size = _header_size(f.read(1 << 20), path.lower())
        except Exception:  # noqa: BLE001 - a damaged header: try the next file
            size = None
        if size and min(size) > 0:
            return size
    return None


def decode_channel(data: bytes, path: str) -> np.ndarray:
    """Decode one channel file's bytes into a 2-D array of its native dtype.

    ``path`` picks the decoder by its extension and names the file in errors. A file that is not
    one grey plane is reduced or refused by the module's rules (see the module docstring).

    >>> decode_channel(fs.read_bytes("a_red.png"), "a_red.png").shape  # doctest: +SKIP
    (512, 512)
    """
    if not data:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); re-download or re-extract it")
    lower = path.lower()
    try:
        if data[:2] == b"\x1f\x8b" or lower.endswith(".gz"):
            data = gzip.decompress(data)
            lower = lower[:-3] if lower.endswith(".gz") else lower
        kind = _content_kind(data) or lower  # the content decides: a JPEG saved as .png is read as a JPEG
        if kind.endswith((".tif", ".tiff")):
            arr = _decode_tiff(data, path)
        else:
            _check_complete(data, kind, path)
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except ImageReadError:
        raise
    except Exception as err:  # decoders raise many types; the user needs the file name
        raise ImageReadError(f"{path}: cannot be decoded ({type(err).__name__}: {err})") from err
    if arr is None:
        raise ImageReadError(f"{path}: cannot be decoded as an image (corrupt or not an image file)")
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = one_plane(arr, path)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageReadError(f"{path}: expected a single-channel 2-D image, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageReadError(f"{path}: contains NaN or infinite values")
    if arr.dtype.kind == "f" and (float(arr.min()) < -1e-6 or float(arr.max()) > 1.0 + 1e-6):
        raise ImageReadError(f"{path}: floating-point values from {float(arr.min()):g} to {float(arr.max()):g}; float "
                             "files must hold intensities in [0, 1] (save raw counts as 16-bit integers instead)")
    if arr.dtype.kind not in "uf":
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
    return arr


def _content_kind(data: bytes) -> str | None:
    """``.png``, ``.jpg`` or ``.tif`` from a file's first bytes, or None when they say nothing."""
    if data.startswith(_PNG_SIGNATURE):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ".tif"
    return None


def _decode_tiff(data: bytes, path: str) -> np.ndarray:
    """One plane of a TIFF, or colour samples (``YXS``); several pages or planes are refused."""
    with tifffile.TiffFile(_io.BytesIO(data)) as tif:
        series = tif.series[0]
        shape = tuple(int(n) for n in series.shape)
        extra = {a: n for a, n in zip(series.axes, shape) if a not in "YXS" and n > 1}
        if len(tif.pages) > 1 or extra:
            planes = max(len(tif.pages), int(np.prod(list(extra.values()) or [1])))
            raise ImageReadError(
                f"{path}: a TIFF of {planes} pages/planes (axes {series.axes}, shape {shape}); hpa-tf reads one grey "
                "plane per channel file: save the plane you mean (a z-stack: its maximum projection, "
                "tifffile.imwrite(out, stack.max(axis=0)))")
        return np.squeeze(series.asarray())


def one_plane(arr: np.ndarray, path: str) -> np.ndarray:
    """The grey plane of an (H, W, C) channel file by the module's colour rules: grey or one hue
    (an HPA colour coding) -> the maximum over its colours; a constant alpha is dropped; any other
    colouring, or a varying alpha, is refused in one line naming the file.

    >>> rgb = np.zeros((8, 8, 3), np.uint8); rgb[2:6, 2:6, 2] = 200  # drawn in one colour
    >>> one_plane(rgb, "a_blue.jpg").max()
    np.uint8(200)
    """
    if 1 in (arr.shape[0], arr.shape[-1]) and arr.ndim == 3:
        squeezed = np.squeeze(arr)
        if squeezed.ndim == 2:
            return squeezed
    if arr.shape[-1] not in (2, 3, 4) or arr.shape[0] <= 4:
        raise ImageReadError(f"{path}: {arr.shape[0]} planes of {arr.shape[1]}x{arr.shape[2]} (a stack?); hpa-tf reads one "
                             "grey plane per channel file: save the plane you mean")
    colours = arr
    if arr.shape[-1] in (2, 4):
        alpha = arr[..., -1]
        if alpha.min() != alpha.max():
            raise ImageReadError(f"{path}: has a varying alpha (transparency: an overlay?); give the channel's "
                                 "grey values as one plane")
        colours = arr[..., :-1]
    if colours.shape[-1] == 1:
        return colours[..., 0]
    signal = colours.max(axis=-1)
    if all(np.array_equal(colours[..., 0], colours[..., k]) for k in range(1, colours.shape[-1])):
        return signal  # grey stored as colour
    top = float(np.iinfo(colours.dtype).max) if colours.dtype.kind == "u" else 1.0
    background = np.median(colours[::4, ::4].reshape(-1, colours.shape[-1]), axis=0)
    deviation = _hue_deviation(colours, signal)
    why = ""
    saturated = float(background.max() - background.min()) > 0.5 * float(background.max())
    on_hue = saturated and _angle(background, _brightest(colours, signal)) <= HUE_TOLERANCE
    if float(background.max()) > BACKGROUND_MAX * top and not on_hue:
        # a dense field of one hue has a bright median of that same, saturated hue; a grey or other-hue
        # background (an inverted map, a colour map's base) is refused
        why = f"its background is {tuple(int(v) for v in background)}, not black"
    elif deviation > HUE_TOLERANCE:
        why = f"its colours turn {deviation:.0f} degrees with brightness"
    if why:
        raise ImageReadError(
            f"{path}: a colour image that is neither grey nor one of HPA's colour codings (red, green, blue or "
            f"yellow on black; {why}): a colour map (e.g. a plot saved with viridis) or a composite? save the "
            "channel's raw intensities as one grey plane")
    return signal


def _brightest(colours: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """The mean colour of the brightest 0.1 % of pixels."""
    flat, m = colours.reshape(-1, colours.shape[-1]).astype(np.float64), signal.reshape(-1)
    return flat[m >= np.percentile(m, 99.9)].mean(axis=0)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees between two colours (as vectors from black)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _hue_deviation(colours: np.ndarray, signal: np.ndarray) -> float:
    """How far an image's colours are from one hue on black, in degrees: the colour above the
    background in five bands of brightness (median to 99.9th percentile of ``signal``), the largest
    angle between two bands (0 for grey and HPA's codings; 40-60 for viridis, magma, jet). A
    colouring whose dimmest plane varies more than its brightest (white to colour: an inverted map)
    counts as 90."""
    step = max(1, int(np.sqrt(signal.size / 250_000)))  # a sample of about 250k pixels is enough
    x = colours[::step, ::step].reshape(-1, colours.shape[-1]).astype(np.float64)
    m = signal[::step, ::step].reshape(-1).astype(np.float64)
    low = x.min(axis=1)
    if np.ptp(np.percentile(low, [50, 99.9])) > np.ptp(np.percentile(m, [50, 99.9])) + 1e-9:
        return 90.0
    lo, hi = (float(v) for v in np.percentile(m, [50, 99.9]))
    if hi <= lo:
        return 0.0
    background = x[m <= lo].mean(axis=0)
    directions = []
    edges = np.linspace(lo, hi, 6)
    for a, b in zip(edges[:-1], edges[1:]):
        band = (m > a) & (m <= b)
        if band.sum() < 20:
            continue
        v = x[band].mean(axis=0) - background
        if np.linalg.norm(v) >= 0.05 * (hi - lo):
            directions.append(v / np.linalg.norm(v))
    if len(directions) < 2:
        return 0.0
    d = np.array(directions)
    return float(np.degrees(np.arccos(np.clip(d @ d.T, -1.0, 1.0).min())))


def _check_complete(data: bytes, lower: str, path: str) -> None:
    """Reject truncated PNG/JPEG files, which decoders may otherwise return half-grey."""
    if lower.endswith(".png"):
        if not data.startswith(_PNG_SIGNATURE):
            raise ImageReadError(f"{path}: not a PNG file (bad signature)")
        if b"IEND" not in data[-16:]:
            raise ImageReadError(f"{path}: truncated PNG (no IEND chunk at the end); re-download it")
        idat = data.find(b"IDAT")
        actl = data.find(b"acTL", 0, idat if idat > 0 else len(data))
        if actl > 0:  # an animated PNG: its frames come after the first image
            frames = int.from_bytes(data[actl + 4 : actl + 8], "big")
            raise ImageReadError(f"{path}: an animated PNG of {frames} frames; hpa-tf reads one grey plane per "
                                 "channel file: save the frame you mean as a plain PNG")
    elif lower.endswith((".jpg", ".jpeg")):
        if not data.startswith(b"\xff\xd8"):
            raise ImageReadError(f"{path}: not a JPEG file (bad signature)")
        if b"\xff\xd9" not in data[-32:]:
            raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker); re-download it")


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Intensity in [0, 1] by the one rule ``value / max(dtype)``; floats are clipped.

    >>> to_unit_float(np.array([0, 65535], np.uint16)).tolist()
    [0.0, 1.0]
    """
    if arr.dtype.kind == "u":
        return arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Intensity as 0..255 by the same rule, rounded to nearest.

    >>> to_uint8(np.array([0, 257, 65535], np.uint16)).tolist()
    [0, 1, 255]
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "u":
        top = np.iinfo(arr.dtype).max
        return ((arr.astype(np.uint64) * 255 + top // 2) // top).astype(np.uint8)
    return np.rint(to_unit_float(arr) * 255.0).astype(np.uint8)


def to_uint16(arr: np.ndarray) -> np.ndarray:
    """Intensity as 0..65535 by the one rule (8-bit 255 -> 65535).

    >>> to_uint16(np.array([0, 1, 255], np.uint8)).tolist()
    [0, 257, 65535]
    """
    if arr.dtype == np.uint16:
        return arr
    if arr.dtype == np.uint8:
        return arr.astype(np.uint16) * np.uint16(257)
    return np.rint(to_unit_float(arr) * 65535.0).astype(np.uint16)


DIM_RANGE = 0.25  # a channel whose top (99.99th percentile) is below this share of its range is stretched


def to_8bit_view(image: np.ndarray) -> np.ndarray:
    """The 8-bit picture of an image for consumers that expect 8 bits (the official segmentation
    networks, overlays), channel by channel: 8-bit channels as they are; a 16-bit or float channel
    that uses at least a quarter of its range by the one rule (:func:`to_uint8`); a dimmer one (a
    12-bit camera, an offset, a dim stain) stretched from its 0.1th to its 99.99th percentile.

    >>> dim = np.zeros((4, 4, 1), np.uint16); dim[0, 0] = 1020
    >>> int(to_8bit_view(dim).max()), int(to_uint8(dim).max())
    (255, 4)
    """
    if image.dtype == np.uint8:
        return image
    planes = image[..., None] if image.ndim == 2 else image
    out = np.empty(planes.shape, np.uint8)
    for k in range(planes.shape[-1]):
        unit = to_unit_float(planes[..., k])
        lo, hi = (float(v) for v in np.percentile(unit[::2, ::2], [0.1, 99.99]))
        if hi >= DIM_RANGE or hi <= lo:
            out[..., k] = np.rint(unit * 255.0).astype(np.uint8) if hi >= DIM_RANGE else 0
        else:
            out[..., k] = np.rint(np.clip((unit - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    return out[..., 0] if image.ndim == 2 else out


def read_image(
    data_dir: str,
    image_id: str,
    *,
    dtype: Literal["uint8", "float32", "native"] = "uint8",
    channels: Sequence[str] = CHANNELS,
    ext: str | None = None,
) -> np.ndarray:
    """Read ``{image_id}_{color}.*`` files into an HxWxC array (default order red, green, blue, yellow).

    ``dtype``: ``uint8`` (the one rule), ``float32`` ([0, 1]) or ``native`` (the files' own uint8, or
    uint16 when any file is 16-bit (8-bit ones then x 257), float32 for float files): full precision.

    >>> img = read_image("shared/data/hpa_samples/hpa2018_512",
    ...                  "837e738c-bba8-11e8-b2ba-ac1f6b6435d0")  # doctest: +SKIP
    >>> img.shape, img.dtype  # doctest: +SKIP
    ((512, 512, 4), dtype('uint8'))
    """
    if dtype not in ("uint8", "float32", "native"):
        raise ValueError(f"dtype must be 'uint8', 'float32' or 'native', not {dtype!r}")
    planes = []
    for color in channels:
        path = channel_path(data_dir, image_id, color, ext)
        try:
            data = fs.read_bytes(path)
        except ImageReadError:
            raise
        except Exception as err:
            raise ImageReadError(f"image {image_id!r}: cannot read {path} ({err})") from err
        planes.append(decode_channel(data, path))
    shapes = {c: p.shape for c, p in zip(channels, planes)}
    if len(set(shapes.values())) > 1:
        sizes = ", ".join(f"{c} {h}x{w}" for c, (h, w) in shapes.items())
        raise ImageReadError(f"image {image_id!r} in {data_dir}: channels differ in size ({sizes})")
    if dtype == "native":
        kinds = {p.dtype for p in planes}
        if kinds == {np.dtype(np.uint8)}:
            return np.stack(planes, axis=-1)
        if kinds <= {np.dtype(np.uint8), np.dtype(np.uint16)}:
            return np.stack([to_uint16(p) for p in planes], axis=-1)
        dtype = "float32"
    convert = to_uint8 if dtype == "uint8" else to_unit_float
    return np.stack([convert(p) for p in planes], axis=-1)
