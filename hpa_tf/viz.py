"""Pictures for people: RGB composites of 4-channel images and cell outlines coloured by class."""

from __future__ import annotations

import cv2
import numpy as np

from hpa_tf import fs
from hpa_tf.labels import NUM_CLASSES

# One distinct colour (BGR for OpenCV) per class; Negative is grey.
_HUES = np.linspace(0, 179, NUM_CLASSES - 1, endpoint=False).astype(np.uint8)
CLASS_COLORS_BGR: np.ndarray = np.vstack([
    cv2.cvtColor(np.stack([_HUES, np.full_like(_HUES, 220), np.full_like(_HUES, 255)], -1)[None], cv2.COLOR_HSV2BGR)[0],
    [[160, 160, 160]],
]).astype(np.uint8)


def composite(image: np.ndarray) -> np.ndarray:
    """HxWx4 (red, green, blue, yellow; uint8) -> HxWx3 BGR the way HPA shows it (yellow = red + green).

    >>> composite(np.zeros((8, 8, 4), np.uint8)).shape
    (8, 8, 3)
    """
    r, g, b, y = (image[..., k].astype(np.float32) for k in range(4))
    rgb = np.stack([b, g + 0.5 * y, r + 0.5 * y], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def draw_cells(bgr: np.ndarray, labels: np.ndarray, cell_classes: dict[int, int] | None = None,
               thickness: int = 1, text: bool = True) -> np.ndarray:
    """Draw each cell's outline (coloured by its class when given) and its class id at its centre.

    >>> draw_cells(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint16)).shape
    (8, 8, 3)
    """
    out = bgr.copy()
    for cid in np.unique(labels):
        if cid == 0:
            continue
        mask = (labels == cid).astype(np.uint8)
        cls = None if cell_classes is None else cell_classes.get(int(cid))
        color = (255, 255, 255) if cls is None else tuple(int(v) for v in CLASS_COLORS_BGR[cls])
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, thickness)
        if text and cls is not None:
            m = cv2.moments(mask, binaryImage=True)
            if m["m00"] > 0:
                x, y = int(m["m10"] / m["m00"]), int(m["m01"] / m["m00"])
                cv2.putText(out, str(cls), (x - 6, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    return out


def write_png(path: str, bgr: np.ndarray) -> None:
    """Write a BGR (or grey) image as PNG through ``tf.io.gfile``. ``write_png("out/a.png", img)``"""
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    fs.write_bytes(path, buf.tobytes())
