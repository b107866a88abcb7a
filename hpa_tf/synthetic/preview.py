"""``preview.png``: a few SynthHPA images as HPA-style composites above their truth."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from hpa_tf import fs, viz
from hpa_tf.io import read_image
from hpa_tf.labels import parse_labels
from hpa_tf.truth import read_cell_mask

TILE = 384


def write_preview(out: str, images: pd.DataFrame, cells: pd.DataFrame, n: int = 4) -> str:
    """Read the first ``n`` images back through :func:`hpa_tf.io.read_image` and tile them.

    Top row: composite (red microtubules, green protein, blue nuclei, yellow ER).
    Bottom row: the green channel with the true cells outlined in the colour of their first
    class, and that class id written in the cell (18 = Negative, grey).
    """
    top, bottom = [], []
    for row in images.head(n).itertuples():
        img = read_image(fs.join(out, row.split), row.ID)
        labels = read_cell_mask(fs.join(out, "truth"), row.ID)
        these = cells[cells["ID"] == row.ID]
        classes = {int(c): parse_labels(lab)[0] for c, lab in zip(these["cell_id"], these["Label"])}
        small = cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA)
        small_lab = cv2.resize(labels, (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        top.append(viz.composite(small))
        green = cv2.cvtColor(np.clip(small[..., 1].astype(np.float32) * 2.0, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        panel = viz.draw_cells(green, small_lab, classes)
        cv2.putText(panel, f"labels {row.Label}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        bottom.append(panel)
    path = fs.join(out, "preview.png")
    if top:
        viz.write_png(path, np.vstack([np.hstack(top), np.hstack(bottom)]))
    return path
