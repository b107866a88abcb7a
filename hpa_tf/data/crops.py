"""Cell crops: every cell of an instance mask as a square crop with the other cells zeroed.

One function shared by the TFRecord builder (training crops) and prediction (the same crops at
test time), so a cell model sees the same kind of input in both.
"""

from __future__ import annotations

import cv2
import numpy as np

from hpa_tf.rle import label_boxes


def cell_crops(image: np.ndarray, cells: np.ndarray,
               size: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every cell as a ``size`` x ``size`` crop of its bounding box, other cells' pixels zeroed,
    padded to a square around its centre (aspect kept) before resizing.

    Crops are cut from the image shrunk by the largest whole factor that keeps the median cell
    at least 1.5 x ``size`` across: the same pixels reach the crop, at a fraction of the cost.
    Returns ``(crops, bbox (n x 4: y0, x0, y1, x1), area, border, cell_index)`` in original pixels.
    """
    h, w = cells.shape
    ids, boxes, areas = label_boxes(cells)
    if ids.size == 0:
        return [], np.zeros((0, 4), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    f = max(1, int(np.median(sides) // (1.5 * size)))
    work, labels = image, cells
    if f > 1:
        work = cv2.resize(image, (w // f, h // f), interpolation=cv2.INTER_AREA)
        labels = cells[: (h // f) * f : f, : (w // f) * f : f]
    crops = []
    for k, (y0, x0, y1, x1) in zip(ids.tolist(), boxes.tolist()):
        a0, b0 = y0 // f, x0 // f
        a1, b1 = max(-(-y1 // f), a0 + 1), max(-(-x1 // f), b0 + 1)
        crop = work[a0:a1, b0:b1].copy()
        lab = labels[a0:a1, b0:b1]
        crop[(lab != k) & (lab != 0)] = 0
        ch, cw = crop.shape[:2]
        side = max(ch, cw)
        square = np.zeros((side, side, image.shape[2]), image.dtype)
        oy, ox = (side - ch) // 2, (side - cw) // 2
        square[oy : oy + ch, ox : ox + cw] = crop
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crops.append(cv2.resize(square, (size, size), interpolation=interp))
    border = ((boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 2] == h) | (boxes[:, 3] == w)).astype(np.int64)
    return crops, boxes.astype(np.int64), areas.astype(np.int64), border, ids.astype(np.int64)
