"""Instance masks (label images) as lossless 16-bit PNG files, through ``tf.io.gfile``."""

from __future__ import annotations

import cv2
import numpy as np

from hpa_tf import fs

# Label images are long runs of one value: zlib's RLE strategy is fast and compresses them well.
_PNG_LABELS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def write_label_png(path: str, labels: np.ndarray) -> None:
    """Write a label image (0 = background, up to 65535 instances) as a uint16 PNG, atomically.

    >>> write_label_png("masks/a_cellmask.png", np.zeros((8, 8), np.uint16))  # doctest: +SKIP
    """
    if labels.ndim != 2:
        raise ValueError(f"{path}: a label image must be 2-D, got shape {labels.shape}")
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: more than 65535 instances do not fit a uint16 mask")
    ok, buf = cv2.imencode(".png", labels.astype(np.uint16), _PNG_LABELS)
    if not ok:
        raise ValueError(f"{path}: the mask could not be encoded as PNG")
    fs.write_bytes(path, buf.tobytes())


def read_label_png(path: str) -> np.ndarray:
    """Read a single-channel label PNG (8- or 16-bit) as uint16.

    >>> read_label_png("shared/data/hpa_samples/hpa_cellatlas_2048/1000_A12_2_cellmask.png").max()  # doctest: +SKIP
    np.uint16(21)
    """
    data = fs.read_bytes(path)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None or arr.ndim != 2:
        raise ValueError(f"{path}: not a single-channel label image")
    return arr.astype(np.uint16, copy=False)
