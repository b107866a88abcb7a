"""The built-in segmenter: classical image processing, no model weights, a fraction of a second
per image on one CPU core.

Steps, all at a reduced working resolution (``internal_size`` px on the longer side, like the
official tool's ``scale_factor``), with every size rule a fraction of the image so 512, 1728,
2048 and 3072 px inputs behave the same:

1. **Nuclei** from the blue channel: normalise by its 99.5th percentile, smooth, threshold
   (Otsu, never below ``min_nucleus_threshold``), fill holes, then split touching nuclei by a
   watershed on the distance transform seeded with its h-maxima (one seed per bump at least
   ``split_depth`` deep, so an elongated nucleus is not cut in pieces).
2. **Cells** grown from the nuclei: foreground where the smoothed red/yellow/blue signal passes
   its own Otsu threshold; each pixel joins the nucleus it is closest to, measured relative to
   that nucleus' size, with the microtubule signal (brighter at the cell cortex) as a ridge
   between neighbours: a marker-controlled watershed.
3. Labels are upsampled to the input resolution (nearest neighbour).

Explicit rules:
- a cell exists only around a nucleus: foreground not reachable from any nucleus is background
  (the competition's truth came from a nucleus-seeded segmentation too);
- a nucleus smaller than ``min_nucleus_frac`` of the image (a quarter of that where it touches
  the border) is debris and dropped; one larger than ``max_nucleus_frac`` is not a nucleus
  (a saturated or flooded channel) and dropped;
- each cell keeps only its connected piece that holds its nucleus; holes in a cell are filled;
- an image whose blue channel has no contrast (black, saturated, constant) has no cells.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from hpa_tf.io.images import to_unit_float
from hpa_tf.segmentation.base import Segmentation, empty_segmentation


@dataclass
class ClassicalConfig:
    """Tunable rules of the classical segmenter (sizes are fractions of the image, not pixels)."""

    internal_size: int = 512
    min_nucleus_threshold: float = 0.2  # on the blue channel normalised to its 99.5th percentile
    min_channel_level: float = 0.02  # a channel whose 99.5th percentile is below this is empty
    min_nucleus_frac: float = 4e-4  # of the image area
    max_nucleus_frac: float = 0.08
    split_depth_frac: float = 0.006  # h of the h-maxima, as a fraction of the image side
    split_solidity: float = 0.93  # blobs at least this convex are never split
    foreground_scale: float = 0.75  # times Otsu's threshold on the cytoplasm signal
    ridge_weight: float = 1.5
    ridge_width_div: float = 100.0  # background scale of the ridge filter: image side / this
    smooth_div: float = 500.0  # smoothing of the cytoplasm signal: image side / this


@dataclass
class ClassicalSegmenter:
    """Classical nuclei + cell segmentation. ``ClassicalSegmenter().segment([img])[0].cells``"""

    config: ClassicalConfig = field(default_factory=ClassicalConfig)
    name: str = "classical"
    timings: dict[str, float] = field(default_factory=dict)

    def segment(self, images: Sequence[np.ndarray], image_ids: Sequence[str] | None = None) -> list[Segmentation]:
        return [self.segment_one(img) for img in images]

    def _tick(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - start
        return now

    def segment_one(self, image: np.ndarray) -> Segmentation:
        """Segment one HxWx4 image (uint8, uint16 or float in [0, 1])."""
        if image.ndim != 3 or image.shape[-1] < 4:
            raise ValueError(f"expected an HxWx4 image (red, green, blue, yellow), got shape {image.shape}")
        h, w = image.shape[:2]
        cfg = self.config
        if min(h, w) < 8:
            return empty_segmentation((h, w))
        t = time.perf_counter()
        scale = min(cfg.internal_size / max(h, w), 1.0)
        size = (max(int(round(w * scale)), 8), max(int(round(h * scale)), 8))
        planes = {}
        for name, k in (("red", 0), ("blue", 2), ("yellow", 3)):
            p = _unit(image[..., k])
            planes[name] = cv2.resize(p, size, interpolation=cv2.INTER_AREA) if scale < 1 else p
        t = self._tick("resize", t)
        side = max(size)
        nuclei = self._nuclei(planes["blue"], side)
        t = self._tick("nuclei", t)
        if nuclei.max() == 0:
            return empty_segmentation((h, w))
        cells = self._cells(planes, nuclei, side)
        t = self._tick("cells", t)
        if scale < 1:
            nuclei = cv2.resize(nuclei, (w, h), interpolation=cv2.INTER_NEAREST)
            cells = cv2.resize(cells, (w, h), interpolation=cv2.INTER_NEAREST)
            nuclei[cells == 0] = 0
            self._tick("upsample", t)
        return Segmentation(nuclei, cells)

    def _nuclei(self, blue: np.ndarray, side: int) -> np.ndarray:
        cfg = self.config
        level = float(np.percentile(blue, 99.5))
        if level < cfg.min_channel_level:
            return np.zeros(blue.shape, np.uint16)
        b = cv2.GaussianBlur(np.minimum(blue / level, 1.0), (0, 0), side / 400)
        if float(b.max() - b.min()) < 0.05:
            return np.zeros(blue.shape, np.uint16)  # constant: saturated or empty
        thr = max(float(threshold_otsu(b)), cfg.min_nucleus_threshold)
        mask = ndi.binary_fill_holes(b > thr)
        area = mask.size
        n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
        keep = np.zeros(n, bool)
        for i in range(1, n):
            x, y, bw, bh, a = stats[i]
            at_border = x == 0 or y == 0 or x + bw == mask.shape[1] or y + bh == mask.shape[0]
            low = cfg.min_nucleus_frac * area * (0.25 if at_border else 1.0)
            keep[i] = low <= a <= cfg.max_nucleus_frac * area * 2  # touching pairs are split below
        mask = keep[lab]
        if not mask.any():
            return np.zeros(blue.shape, np.uint16)
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        dist = cv2.GaussianBlur(dist, (0, 0), 1.0)
        seeds, n_seeds = ndi.label(h_maxima(dist, max(cfg.split_depth_frac * side, 1.0)))
        # A nearly convex blob is one nucleus, however elongated (a dividing cell's chromosome
        # plate); touching nuclei leave a concave waist. Convex blobs get a single seed.
        blobs, n_blobs = ndi.label(mask)
        for k, sl in enumerate(ndi.find_objects(blobs), start=1):
            piece = blobs[sl] == k
            if _solidity(piece) >= cfg.split_solidity:
                in_piece = seeds[sl][piece]
                first = in_piece[in_piece > 0]
                if first.size:
                    seeds[sl][piece & (seeds[sl] > 0)] = first[0]
        labels = watershed(-dist, seeds, mask=mask).astype(np.int32)
        sizes = np.bincount(labels.ravel())
        too_big = np.flatnonzero(sizes > cfg.max_nucleus_frac * area)
        too_big = too_big[too_big != 0]
        if too_big.size:
            labels[np.isin(labels, too_big)] = 0
        return _relabel(labels)

    def _cells(self, planes: dict[str, np.ndarray], nuclei: np.ndarray, side: int) -> np.ndarray:
        cfg = self.config
        sigma = side / cfg.smooth_div
        cyto = np.zeros_like(planes["red"])
        for name in ("red", "yellow"):
            level = max(float(np.percentile(planes[name], 99.5)), cfg.min_channel_level)
            cyto = np.maximum(cyto, np.minimum(planes[name] / level, 1.0))
        cyto = cv2.GaussianBlur(cyto, (0, 0), sigma)
        has_nucleus = nuclei > 0
        if float(cyto.max() - cyto.min()) > 0.05:
            fg = cyto > cfg.foreground_scale * float(threshold_otsu(cyto))
        else:
            fg = np.zeros_like(has_nucleus)
        # Only small holes: a gap enclosed by a ring of cells is background, not cell.
        fg = _fill_small_holes(fg | has_nucleus, cfg.min_nucleus_frac * fg.size)
        # Each pixel's distance to the nearest nucleus, relative to that nucleus' size: bigger
        # nuclei have bigger cells. Plus the cortex ridge of the microtubule channel.
        dist, (iy, ix) = ndi.distance_transform_edt(~has_nucleus, return_indices=True)
        owner = nuclei[iy, ix]
        radius = np.sqrt(np.bincount(nuclei.ravel()).astype(np.float32) / np.pi)
        rel = dist / np.maximum(radius[owner], 1.0)
        # Thin bright lines (difference of Gaussians), not bright areas: a rounded, uniformly
        # bright dividing cell is no barrier, the cortex between two cells is.
        red = planes["red"]
        ridge = np.maximum(cv2.GaussianBlur(red, (0, 0), sigma) - cv2.GaussianBlur(red, (0, 0), side / cfg.ridge_width_div), 0)
        ridge = ridge / max(float(np.percentile(ridge[fg], 99)) if fg.any() else 1.0, 1e-6)
        elevation = rel + cfg.ridge_weight * ridge
        cells = watershed(elevation, nuclei, mask=fg).astype(np.int32)
        return _keep_nucleated_piece(cells, nuclei)


def _unit(plane: np.ndarray) -> np.ndarray:
    """A channel in [0, 1] by the package's one rule; NaN (a broken float TIFF) counts as dark."""
    return np.nan_to_num(to_unit_float(plane), nan=0.0)


def _solidity(piece: np.ndarray) -> float:
    """Area over convex-hull area of a binary blob (1.0 = convex)."""
    contours, _ = cv2.findContours(piece.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 1.0
    hull = cv2.contourArea(cv2.convexHull(np.vstack(contours)))
    return float(piece.sum()) / hull if hull > 0 else 1.0


def _fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill background pockets smaller than ``max_area`` that do not touch the image border."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    h, w = mask.shape
    x, y, bw, bh, area = (stats[:, k] for k in range(5))
    inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
    fill = inner & (area <= max_area)
    fill[0] = False
    return mask | fill[lab]


def _relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint16)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint16)
    return lut[labels]


def _keep_nucleated_piece(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Drop the pieces of a cell that are cut off from its nucleus; fill holes inside cells."""
    out = np.zeros(cells.shape, np.uint16)
    for k, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        piece = cells[sl] == k
        lab, n = ndi.label(piece)
        if n > 1:
            hit = np.unique(lab[(nuclei[sl] == k) & piece])
            hit = hit[hit != 0]
            piece = np.isin(lab, hit) if hit.size else piece
        piece = ndi.binary_fill_holes(piece)
        out[sl][piece & (out[sl] == 0)] = k
    return out
