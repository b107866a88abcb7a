"""Per-cell pictures: the green pattern of each of the 19 classes, and the three landmarks.

Every function draws one cell in the local coordinates of its bounding box and returns a
float32 image in about [0, 1], not yet clipped to the cell (the caller does that). ``s`` is
the image size / 1024, so strokes and dots keep their physical size at 512 to 3072 px.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from hpa_tf.synthetic.layout import Cell

Rng = np.random.Generator
_SHIFT = 3  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT


def _canvas(cell: Cell) -> np.ndarray:
    return np.zeros(cell.mask.shape, np.uint8)


def _as_float(canvas: np.ndarray, blur: float = 0.0) -> np.ndarray:
    out = canvas.astype(np.float32) * (1.0 / 255.0)
    return cv2.GaussianBlur(out, (0, 0), blur) if blur > 0 else out


def _levels(values: np.ndarray) -> list[int]:
    return (np.clip(np.asarray(values, np.float64), 0, 1) * 255).astype(int).tolist()


def _dots(canvas: np.ndarray, pts: np.ndarray, radii: np.ndarray, values: np.ndarray) -> np.ndarray:
    centres = np.round(np.asarray(pts)[:, ::-1] * _ONE).astype(int).tolist()
    rad = np.maximum(np.asarray(radii) * _ONE, _ONE // 2).astype(int).tolist()
    for c, r, v in zip(centres, rad, _levels(values)):
        cv2.circle(canvas, c, r, v, -1, cv2.LINE_AA, _SHIFT)
    return canvas


def _lines(canvas: np.ndarray, paths: np.ndarray | list[np.ndarray], width: float, values: np.ndarray) -> np.ndarray:
    """Draw polylines ``width`` px wide; a stroke under 1 px is drawn 1 px wide and dimmer, so a
    filament keeps its physical width (and look) at every image size."""
    thickness = max(1, int(round(width)))
    values = np.asarray(values) * min(width, 1.0)
    for path, v in zip(paths, _levels(values)):
        pts = np.round(np.asarray(path)[:, ::-1] * _ONE).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], False, v, thickness, cv2.LINE_AA, _SHIFT)
    return canvas


def _points_in(rng: Rng, region: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """``n`` random pixel positions (y, x) inside ``region`` (optionally weighted), jittered."""
    ys, xs = np.nonzero(region)
    if ys.size == 0 or n <= 0:
        return np.zeros((0, 2))
    p = None
    if weights is not None:
        w = weights[ys, xs].astype(np.float64)
        p = w / w.sum() if w.sum() > 0 else None
    k = rng.choice(ys.size, size=n, p=p)
    return np.stack([ys[k], xs[k]], 1) + rng.uniform(-0.5, 0.5, (n, 2))


def _walks(rng: Rng, starts: np.ndarray, headings: np.ndarray, steps: int, step: float, turn: float) -> np.ndarray:
    """Smooth random curves, shape (n, steps + 1, 2): paths whose heading drifts by ``turn`` per step."""
    starts = np.broadcast_to(np.asarray(starts, np.float64).reshape(-1, 2), (len(headings), 2))
    h = np.asarray(headings)[:, None] + np.cumsum(rng.normal(0, turn, (len(headings), steps)), 1)
    d = np.stack([np.sin(h), np.cos(h)], -1) * step
    return np.concatenate([starts[:, None], starts[:, None] + np.cumsum(d, 1)], 1)


def _near_nucleus(cell: Cell, falloff: float) -> np.ndarray:
    """Weight that decays with distance from the nucleus (organelles crowd around it)."""
    return np.exp(-np.maximum(cell.dn - 1.0, 0.0) / falloff)


def _radial_filaments(cell: Cell, rng: Rng, s: float, n: int) -> np.ndarray:
    """Microtubule-like filaments: from the centrosome outward, gently curved, to the cell edge."""
    steps = 12
    return _walks(rng, np.array(cell.centrosome), rng.uniform(0, 2 * np.pi, n), steps, 2.2 * cell.radius / steps, 0.15)


def _spindle(cell: Cell, rng: Rng, s: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Mitotic spindle: fibres from two poles either side of the chromosome plate."""
    cy, cx = cell.nucleus_center
    a = cell.nucleus_angle  # the plate's long axis; poles sit across it
    ny, nx = np.cos(a), -np.sin(a)  # unit normal to the plate, as (dy, dx)
    half = 0.75 * cell.radius
    poles = np.array([[cy + half * ny, cx + half * nx], [cy - half * ny, cx - half * nx]])
    plate_len = 1.1 * cell.nucleus_radius * 2
    paths = []
    for pole in poles:
        for t in np.linspace(-0.5, 0.5, 11):
            end = np.array([cy + t * plate_len * np.sin(a), cx + t * plate_len * np.cos(a)])
            paths.append(np.linspace(pole, end, 6))
    return paths, poles


# ---- green patterns, one per class -------------------------------------------------------------

def nucleoplasm(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    return cell.nucleus * (0.75 + 0.25 * tex) * (1.0 - 0.6 * _nucleoli_field(cell, rng, s))


def _nucleoli_sites(cell: Cell, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    # Drawn from the cell's own seed, so blue (dark nucleoli), nucleoli and fibrillar-centre
    # patterns agree on where the nucleoli are.
    local = np.random.default_rng(cell.seed)
    inner = cell.nucleus & (cell.dn < 0.65)
    n = int(local.integers(1, 5))
    pts = _points_in(local, inner, n)
    radii = cell.nucleus_radius * local.uniform(0.12, 0.2, len(pts))
    return pts, radii


def _nucleoli_field(cell: Cell, rng: Rng, s: float) -> np.ndarray:
    pts, radii = _nucleoli_sites(cell, rng)
    return _as_float(_dots(_canvas(cell), pts, radii, np.ones(len(pts))), 1.0 * s)


def nuclear_membrane(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    width = max(1.6 * s / cell.nucleus_radius, 0.025)
    return np.exp(-(((cell.dn - 1.0) / width) ** 2)) * (0.8 + 0.2 * tex)


def nucleoli(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    return np.minimum(_nucleoli_field(cell, rng, s) * (0.85 + 0.3 * tex), 1.0)


def nucleoli_fibrillar_center(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    centres, radii = _nucleoli_sites(cell, rng)
    canvas = _canvas(cell)
    for c, r in zip(centres, radii):
        k = int(rng.integers(3, 9))
        pts = c + rng.normal(0, 0.45 * r, (k, 2))
        _dots(canvas, pts, np.full(k, 1.3 * s), rng.uniform(0.7, 1.0, k))
    return _as_float(canvas, 0.6 * s) * 1.6


def nuclear_speckles(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    n = int(rng.integers(15, 35))
    pts = _points_in(rng, cell.nucleus & (cell.dn < 0.9), n)
    radii = cell.nucleus_radius * rng.uniform(0.04, 0.09, len(pts))
    blobs = _as_float(_dots(_canvas(cell), pts, radii, rng.uniform(0.5, 1.0, len(pts))), 1.5 * s)
    return np.minimum(blobs * 1.3, 1.0) + 0.12 * cell.nucleus


def nuclear_bodies(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    n = int(rng.integers(1, 7))
    pts = _points_in(rng, cell.nucleus & (cell.dn < 0.85), n)
    return _as_float(_dots(_canvas(cell), pts, np.full(len(pts), 2.2 * s), np.ones(len(pts))), 0.8 * s)


def endoplasmic_reticulum(cell: Cell, rng: Rng, s: float, tex: np.ndarray, er: np.ndarray) -> np.ndarray:
    return er * cell.cytoplasm * (0.35 + 0.65 * _near_nucleus(cell, 0.8))


def golgi(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    side = rng.uniform(0, 2 * np.pi)
    cy, cx = cell.nucleus_center
    r = cell.nucleus_radius * rng.uniform(1.1, 1.3)
    ang = side + rng.normal(0, 0.35, 25)
    rad = r * rng.uniform(0.95, 1.25, 25)
    pts = np.stack([cy + rad * np.sin(ang), cx + rad * np.cos(ang)], 1)
    canvas = _dots(_canvas(cell), pts, cell.nucleus_radius * rng.uniform(0.05, 0.12, 25), rng.uniform(0.6, 1, 25))
    return np.minimum(_as_float(canvas, 1.2 * s) * 1.4, 1.0) * cell.cytoplasm


def intermediate_filaments(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    n = int(rng.integers(14, 26))
    starts = _points_in(rng, cell.cytoplasm, n, _near_nucleus(cell, 0.5))
    paths = _walks(rng, starts, rng.uniform(0, 2 * np.pi, len(starts)), 30, 0.12 * cell.radius, 0.25)
    canvas = _lines(_canvas(cell), paths, 1.2 * s, rng.uniform(0.6, 1.0, n))
    return _as_float(canvas, 0.7 * s)


def actin_filaments(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    h, w = cell.mask.shape
    a = rng.uniform(0, np.pi)
    d = np.array([np.sin(a), np.cos(a)])
    nrm = np.array([d[1], -d[0]])
    c = np.array([h / 2, w / 2])
    n = int(rng.integers(8, 16))
    offs = rng.uniform(-0.5, 0.5, n) * max(h, w)
    paths = [np.stack([c + o * nrm - d * max(h, w), c + o * nrm + d * max(h, w)]) for o in offs]
    fibres = _as_float(_lines(_canvas(cell), paths, 1.5 * s, rng.uniform(0.5, 1.0, n)), 0.6 * s)
    cortex = np.exp(-cell.edge / (2.5 * s)) * cell.mask
    return np.maximum(fibres, 0.9 * cortex)


def microtubules(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    paths = _radial_filaments(cell, rng, s, int(rng.integers(25, 45)))
    canvas = _lines(_canvas(cell), paths, 1.0 * s, rng.uniform(0.5, 1.0, len(paths)))
    return _as_float(canvas, 0.6 * s) + 0.1 * cell.cytoplasm


def mitotic_spindle(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    if not cell.mitotic:
        return np.zeros(cell.mask.shape, np.float32)
    paths, poles = _spindle(cell, rng, s)
    canvas = _lines(_canvas(cell), paths, 1.5 * s, np.full(len(paths), 0.8))
    _dots(canvas, poles, np.full(2, 3.0 * s), np.ones(2))
    return _as_float(canvas, 1.0 * s)


def centrosome(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    c = np.array(cell.centrosome)
    pts = np.vstack([c, c + rng.normal(0, 2.5 * s, 2)])[: int(rng.integers(1, 3))]
    return np.minimum(_as_float(_dots(_canvas(cell), pts, np.full(len(pts), 2.6 * s), np.ones(len(pts))), 1.0 * s) * 1.5, 1.0)


def plasma_membrane(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    return np.exp(-cell.edge / (2.0 * s)) * cell.mask * (0.75 + 0.25 * tex)


def mitochondria(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    n = int(rng.integers(50, 110) * max(cell.radius / (90 * s), 0.5))
    pts = _points_in(rng, cell.cytoplasm, n, _near_nucleus(cell, 0.7))
    ang = rng.uniform(0, np.pi, len(pts))
    half = rng.uniform(2.5, 6.0, len(pts)) * s
    d = np.stack([np.sin(ang), np.cos(ang)], 1) * half[:, None]
    paths = [np.stack([p - v, p + v]) for p, v in zip(pts, d)]
    canvas = _lines(_canvas(cell), paths, 1.8 * s, rng.uniform(0.5, 1.0, len(paths)))
    return _as_float(canvas, 0.7 * s)


def aggresome(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    cy, cx = cell.centrosome
    r = cell.nucleus_radius * rng.uniform(0.3, 0.45)
    pts = np.array([cy, cx]) + rng.normal(0, 0.35 * r, (6, 2))
    blob = _as_float(_dots(_canvas(cell), pts, r * rng.uniform(0.5, 0.8, 6), np.ones(6)), 1.5 * s)
    return np.minimum(blob * 1.2, 1.0) + 0.08 * cell.cytoplasm


def cytosol(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    return cell.cytoplasm * (0.55 + 0.15 * tex) * (0.8 + 0.2 * _near_nucleus(cell, 1.0))


def vesicles(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    n = int(rng.integers(30, 90) * max(cell.radius / (90 * s), 0.5))
    pts = _points_in(rng, cell.cytoplasm, n)
    return _as_float(_dots(_canvas(cell), pts, rng.uniform(1.3, 2.6, len(pts)) * s, rng.uniform(0.5, 1.0, len(pts))), 0.6 * s)


GREEN_PATTERNS: dict[int, Callable[..., np.ndarray]] = {
    0: nucleoplasm, 1: nuclear_membrane, 2: nucleoli, 3: nucleoli_fibrillar_center,
    4: nuclear_speckles, 5: nuclear_bodies, 6: endoplasmic_reticulum, 7: golgi,
    8: intermediate_filaments, 9: actin_filaments, 10: microtubules, 11: mitotic_spindle,
    12: centrosome, 13: plasma_membrane, 14: mitochondria, 15: aggresome, 16: cytosol,
    17: vesicles,
}  # 18 (Negative) has no specific pattern


# ---- landmarks -----------------------------------------------------------------------------------

def blue_nucleus(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    if cell.mitotic:
        return cell.nucleus * (0.9 + 0.3 * tex)
    d2 = cell.dn * cell.dn
    rim = np.clip(1.0 - 0.25 * d2 * d2, 0.0, 1.0)
    return cell.nucleus * rim * (0.8 + 0.35 * tex) * (1.0 - 0.35 * _nucleoli_field(cell, rng, s))


def red_microtubules(cell: Cell, rng: Rng, s: float, tex: np.ndarray) -> np.ndarray:
    if cell.mitotic:
        return 0.7 * mitotic_spindle(cell, rng, s, tex) + 0.35 * cell.mask
    paths = _radial_filaments(cell, rng, s, int(rng.integers(30, 55)))
    canvas = _lines(_canvas(cell), paths, 1.0 * s, rng.uniform(0.3, 0.8, len(paths)))
    cortex = np.exp(-cell.edge / (3.0 * s))
    return (_as_float(canvas, 0.8 * s) + 0.22 + 0.35 * cortex) * cell.mask * (1.0 - 0.6 * cell.nucleus)


def yellow_er(cell: Cell, rng: Rng, s: float, tex: np.ndarray, er: np.ndarray) -> np.ndarray:
    envelope = 0.4 * np.exp(-(((cell.dn - 1.0) / 0.06) ** 2))
    return (er * (0.25 + 0.5 * _near_nucleus(cell, 0.9)) + 0.2 + 0.15 * tex) * cell.cytoplasm + envelope * cell.mask
