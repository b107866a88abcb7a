"""Read one HPA image: four single-channel files -> an HxWx4 array (red, green, blue, yellow).

Formats: ``.png`` (8- or 16-bit), ``.tif``/``.tiff`` (16-bit or float), ``.tif.gz`` (the external
data's full-resolution files) and ``.jpg``. A colour-coded file (the HPA website's RGB JPEGs,
where ``_red.jpg`` is drawn in red) is reduced to one channel by the maximum over its colours.

The one rule for bit depths: a pixel's intensity is ``value / max(dtype)``, so 8-bit 255 and
16-bit 65535 are both 1.0. ``read_image(..., dtype="uint8")`` rounds that to 0..255 (the storage
and model-input convention of hpa-tf: the model divides by 255); ``dtype="float32"`` keeps the
full precision of 16-bit files in [0, 1].
"""

from __future__ import annotations

import gzip
import io as _io
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


class ImageReadError(IOError):
    """A channel file that is missing, empty, truncated, undecodable or inconsistent."""


def channel_path(data_dir: str, image_id: str, color: str, ext: str | None = None) -> str:
    """Path of one channel file; with ``ext=None`` the extensions are probed in order.

    >>> channel_path("data/train", "abc", "red", ext=".png")
    'data/train/abc_red.png'
    """
    if ext is not None:
        return fs.join(data_dir, f"{image_id}_{color}{ext}")
    # Datasets use one extension throughout: try the last one that worked first.
    first = _last_ext.get(data_dir)
    order = ([first] if first else []) + [e for e in EXTENSIONS if e != first]
    for candidate in order:
        path = fs.join(data_dir, f"{image_id}_{color}{candidate}")
        if fs.exists(path):
            _last_ext[data_dir] = candidate
            return path
    raise ImageReadError(
        f"image {image_id!r}: no {color} channel in {data_dir!r} "
        f"(looked for {image_id}_{color} with {', '.join(EXTENSIONS)}); "
        "every image needs _red, _green, _blue and _yellow files"
    )


def has_any_channel(data_dir: str, image_id: str) -> bool:
    """Whether any channel file of an image exists, in any of the formats.

    >>> has_any_channel("data/train", "abc")  # doctest: +SKIP
    True
    """
    return any(fs.exists(fs.join(data_dir, f"{image_id}_{c}{e}")) for c in CHANNELS for e in EXTENSIONS)


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
        for ext in EXTENSIONS:
            path = fs.join(data_dir, f"{image_id}_{color}{ext}")
            if not fs.exists(path):
                continue
            try:
                size = _header_size(fs.read_bytes(path)[: 1 << 20], path.lower())
            except Exception:  # noqa: BLE001 - a damaged header: try the next file
                size = None
            if size and min(size) > 0:
                return size
    return None


def decode_channel(data: bytes, path: str) -> np.ndarray:
    """Decode one channel file's bytes into a 2-D array of its native dtype.

    ``path`` picks the decoder by its extension and names the file in errors.

    >>> decode_channel(fs.read_bytes("a_red.png"), "a_red.png").shape  # doctest: +SKIP
    (512, 512)
    """
    if not data:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); re-download or re-extract it")
    lower = path.lower()
    try:
        if lower.endswith(".gz"):
            data = gzip.decompress(data)
            lower = lower[:-3]
        if lower.endswith((".tif", ".tiff")):
            arr = tifffile.imread(_io.BytesIO(data))
        else:
            _check_complete(data, lower, path)
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except ImageReadError:
        raise
    except Exception as err:  # decoders raise many types; the user needs the file name
        raise ImageReadError(f"{path}: cannot be decoded ({type(err).__name__}: {err})") from err
    if arr is None:
        raise ImageReadError(f"{path}: cannot be decoded as an image (corrupt or not an image file)")
    arr = np.asarray(arr)
    arr = np.squeeze(arr) if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]) else arr
    if arr.ndim == 3:
        # Colour-coded channel files: the colour that carries the signal is the brightest one.
        arr = arr[..., :3].max(axis=-1)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageReadError(f"{path}: expected a single-channel 2-D image, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageReadError(f"{path}: contains NaN or infinite values")
    if arr.dtype.kind not in "uf":
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
    return arr


def _check_complete(data: bytes, lower: str, path: str) -> None:
    """Reject truncated PNG/JPEG files, which decoders may otherwise return half-grey."""
    if lower.endswith(".png"):
        if not data.startswith(_PNG_SIGNATURE):
            raise ImageReadError(f"{path}: not a PNG file (bad signature)")
        if b"IEND" not in data[-16:]:
            raise ImageReadError(f"{path}: truncated PNG (no IEND chunk at the end); re-download it")
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


def read_image(
    data_dir: str,
    image_id: str,
    *,
    dtype: Literal["uint8", "float32"] = "uint8",
    channels: Sequence[str] = CHANNELS,
    ext: str | None = None,
) -> np.ndarray:
    """Read ``{image_id}_{color}.*`` files into an HxWxC array (default order red, green, blue, yellow).

    >>> img = read_image("shared/data/hpa_samples/hpa2018_512",
    ...                  "837e738c-bba8-11e8-b2ba-ac1f6b6435d0")  # doctest: +SKIP
    >>> img.shape, img.dtype  # doctest: +SKIP
    ((512, 512, 4), dtype('uint8'))
    """
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', not {dtype!r}")
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
    convert = to_uint8 if dtype == "uint8" else to_unit_float
    return np.stack([convert(p) for p in planes], axis=-1)
