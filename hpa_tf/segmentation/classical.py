"""The built-in segmenter: classical image processing, no model weights, a fraction of a second
per image on one CPU core.

Steps, all at a reduced working resolution (``internal_size`` px on the longer side, like the
official tool's ``scale_factor``), with every size rule a fraction of the image so 512, 1728,
2048 and 3072 px inputs behave the same:

1. **Nuclei** from the blue channel, made for real fluorescence (dim and bright nuclei in one
   field, touching nuclei): subtract the background (a grey opening larger than a nucleus), take
   the log of the signal over the background noise (so a few very bright nuclei do not pull the
   threshold up) and threshold it (Otsu); estimate the nucleus radius from the field's own
   well-separated convex blobs; seed one nucleus per peak of a Laplacian-of-Gaussian blob filter
   tuned to that radius (touching nuclei of similar size each keep a peak) and split by a
   watershed on that response; then refine each nucleus on its own: its pixels are those above
   ``refine_fraction`` of its own brightness (its 90th percentile), so a dim nucleus gets its whole
   outline and not just its core, and a bright one is not bloated.
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
- each channel's offset (its 0.1th percentile: a camera's black level, a 16-bit file stored from
  3000 up) is subtracted first, so an offset field segments as its 0-based copy;
- an image whose blue channel has no contrast (black, saturated, constant, or noise only: its
  spread from median to 99.5th percentile under ``min_snr`` times the background noise, measured
  in the file's own intensity steps) has no cells; a dim 16-bit image with real nuclei does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from hpa_tf.io.images import to_unit_float
from hpa_tf.segmentation.base import Segmentation, empty_segmentation


OFFSET_PERCENTILE = 0.1  # each channel's offset (its darkest pixels' level) is subtracted first


@dataclass
class ClassicalConfig:
    """Tunable rules of the classical segmenter (sizes are fractions of the image, not pixels)."""

    internal_size: int = 512
    min_channel_level: float = 0.02  # a cytoplasm channel whose 99.5th percentile is below this is empty
    min_snr: float = 8.0  # blue spread (median to 99.5th percentile) over its background noise, or no nuclei
    min_nucleus_frac: float = 4e-4  # of the image area
    max_nucleus_frac: float = 0.08
    background_div: float = 20.0  # background opening radius: image side / this (larger than a nucleus)
    seed_scale: float = 0.7  # blob filter sigma = this x the nucleus radius / sqrt(2)
    seed_min_distance: float = 0.6  # between two nucleus seeds, x the nucleus radius
    seed_min_response: float = 0.2  # of the blob filter's 99th percentile over the foreground
    smooth_texture: float = 0.04  # nuclei this smooth (see _texture) have no spurious blob-filter peaks ...
    seed_depth_per_texture: float = 2.0  # ... above it, a seed rises this x the excess x the filter's top above its saddle
    refine_fraction: float = 0.5  # each nucleus: its pixels above this x its own brightness ...
    refine_smoothing: float = 0.05  # ... smoothed at this x the radius (more blurs real outlines)
    merge_solidity: float = 0.98  # two touching nuclei whose union is at least this convex are one ...
    merge_closing: float = 0.35  # ... once notches narrower than this x the radius are closed
    merge_enclosed: float = 0.5  # a nucleus with this share of its outline on one neighbour is part of it
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
            p = np.maximum(p - np.float32(np.percentile(p[::4, ::4], OFFSET_PERCENTILE)), 0)  # a camera's offset
            planes[name] = cv2.resize(p, size, interpolation=cv2.INTER_AREA) if scale < 1 else p
        t = self._tick("resize", t)
        side = max(size)
        quantum = 1.0 / np.iinfo(image.dtype).max if image.dtype.kind == "u" else 1e-6  # one intensity step
        nuclei = self._nuclei(planes["blue"], side, quantum)
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

    def _nuclei(self, blue: np.ndarray, side: int, quantum: float) -> np.ndarray:
        cfg = self.config
        p50, p995 = np.percentile(blue, [50, 99.5])
        below = blue[blue <= p50]
        noise = max(1.4826 * float(np.median(np.abs(below - np.median(below)))), quantum)
        if p995 - p50 < cfg.min_snr * noise:
            return np.zeros(blue.shape, np.uint16)  # black, saturated, constant or noise only
        smooth = cv2.GaussianBlur(blue, (0, 0), side / 400)
        signal = np.maximum(smooth - _background(smooth, side / cfg.background_div), 0)
        log_signal = np.log1p(signal / noise)
        mask = ndi.binary_fill_holes(log_signal > threshold_otsu(log_signal))
        area = mask.size
        mask = _drop_small(mask, cfg.min_nucleus_frac * area)
        if not mask.any():
            return np.zeros(blue.shape, np.uint16)
        radius = _nucleus_radius(mask, side)
        seeds, blob = _blob_seeds(log_signal, mask, radius, cfg)
        seeds = _seed_every_blob(mask, seeds, blob)  # a nucleus cut by the edge, or a faint one beside a bright one
        smooth = cv2.GaussianBlur(signal, (0, 0), max(cfg.refine_smoothing * radius, 0.3))  # texture is not an edge
        regions = watershed(-blob, seeds, mask=mask).astype(np.int32)
        labels = _refine(regions, smooth, cfg.refine_fraction)
        labels = _merge_convex_pairs(labels, regions, cfg.merge_solidity, int(round(cfg.merge_closing * radius)),
                                     cfg.merge_enclosed)
        sizes = np.bincount(labels.ravel())
        bad = np.flatnonzero((sizes > cfg.max_nucleus_frac * area) | (sizes < cfg.min_nucleus_frac * area / 4))
        bad = bad[bad != 0]
        if bad.size:
            labels[np.isin(labels, bad)] = 0
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


def _background(plane: np.ndarray, radius: float) -> np.ndarray:
    """A smooth background: a grey opening with a disk wider than a nucleus, on a 4x smaller image."""
    f = 4
    small = cv2.resize(plane, (max(plane.shape[1] // f, 1), max(plane.shape[0] // f, 1)), interpolation=cv2.INTER_AREA)
    r = max(int(radius / f), 1)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    bg = cv2.GaussianBlur(cv2.morphologyEx(small, cv2.MORPH_OPEN, disk), (0, 0), r)
    return cv2.resize(bg, (plane.shape[1], plane.shape[0]), interpolation=cv2.INTER_LINEAR)


def _drop_small(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Components below ``min_area`` (a quarter of it at the border) are debris."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    x, y, bw, bh, a = (stats[:, k] for k in range(5))
    h, w = mask.shape
    at_border = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    keep = a >= np.where(at_border, min_area / 4, min_area)
    keep[0] = False
    return keep[lab]


def _nucleus_radius(mask: np.ndarray, side: int) -> float:
    """The field's nucleus radius: the median over its well-separated (convex) blobs; side / 40 when
    there are too few of them."""
    lab, _ = ndi.label(mask)
    areas = [int(piece.sum()) for k, sl in enumerate(ndi.find_objects(lab), start=1)
             if (piece := lab[sl] == k).sum() >= 20 and _solidity(piece) > 0.95]
    return float(np.sqrt(np.median(areas) / np.pi)) if len(areas) >= 3 else side / 40


def _blob_seeds(log_signal: np.ndarray, mask: np.ndarray, radius: float, cfg: ClassicalConfig) -> tuple[np.ndarray, np.ndarray]:
    """One seed per nucleus: peaks of a Laplacian-of-Gaussian blob filter tuned to the field's nucleus
    radius (touching nuclei of similar size each keep a peak), at least ``seed_min_distance`` radii
    apart, and rising above their saddles by more than the nuclei's own texture makes (a smooth field
    keeps shallow saddles: they are boundaries). Returns the seeds and the response the watershed follows."""
    sigma = max(cfg.seed_scale * radius / np.sqrt(2), 1.0)
    response = -ndi.gaussian_laplace(log_signal, sigma) * sigma**2
    top = float(np.percentile(response[mask], 99))
    peaks = peak_local_max(response, min_distance=max(int(cfg.seed_min_distance * radius), 1),
                           threshold_abs=cfg.seed_min_response * top, labels=mask.astype(np.int32), exclude_border=False)
    depth = cfg.seed_depth_per_texture * max(_texture(log_signal, mask, radius) - cfg.smooth_texture, 0.0) * top
    if depth > 0 and len(peaks):
        deep = ndi.binary_dilation(h_maxima(np.where(mask, response, response.min()), depth).astype(bool), iterations=2)
        peaks = peaks[deep[peaks[:, 0], peaks[:, 1]]]
    seeds = np.zeros(mask.shape, np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return seeds, response


def _texture(log_signal: np.ndarray, mask: np.ndarray, radius: float) -> float:
    """How textured the nuclei are: the robust spread of a band-pass (radius/8 to radius/3) of the
    log signal well inside the foreground, relative to its level there. Smooth nuclei ~0.05 (the
    BBBC038 image), HPA and SynthHPA nuclei 0.10-0.13."""
    inner = ndi.binary_erosion(mask, iterations=max(int(radius / 4), 1))
    if inner.sum() < 50:
        return 0.0
    band = cv2.GaussianBlur(log_signal, (0, 0), radius / 8) - cv2.GaussianBlur(log_signal, (0, 0), radius / 3)
    values = band[inner]
    level = float(np.median(log_signal[inner]))
    return 1.4826 * float(np.median(np.abs(values - np.median(values)))) / max(level, 1e-6)


def _seed_every_blob(mask: np.ndarray, seeds: np.ndarray, response: np.ndarray) -> np.ndarray:
    """One seed, at its strongest response, for every foreground blob that got none (a watershed
    would drop it): a nucleus cut by the image edge has its blob-filter peak outside the image."""
    blobs, n = ndi.label(mask)
    if n == 0:
        return seeds
    seeded = np.zeros(n + 1, bool)
    seeded[np.unique(blobs[seeds > 0])] = True
    next_id = int(seeds.max()) + 1
    for k, sl in enumerate(ndi.find_objects(blobs), start=1):
        if sl is None or seeded[k]:
            continue
        inside = blobs[sl] == k
        y, x = np.unravel_index(np.argmax(np.where(inside, response[sl], -np.inf)), inside.shape)
        seeds[sl][y, x] = next_id
        next_id += 1
    return seeds


def _merge_convex_pairs(labels: np.ndarray, regions: np.ndarray, solidity: float, close: int = 0,
                        enclosed: float = 1.0) -> np.ndarray:
    """Merge touching nuclei that are one, the surest pair first, until no pair is: the blob filter
    splits a large or textured nucleus, while two real nuclei leave a concave waist where they touch.
    Two nuclei are one when their union, notches narrower than ``close`` px closed (a dark nucleolus
    on the cut) and holes filled, is at least ``solidity`` convex (below 0.96 for every touching pair
    of the real nuclei image, above 0.98 for most wrong splits on SynthHPA), or when one has at least
    ``enclosed`` of its outline on the other. Neighbours are read from the watershed ``regions`` the
    nuclei were refined from (refined pieces of one nucleus may not touch)."""
    if labels.max() < 2:
        return labels
    labels, regions = labels.copy(), regions.copy()
    kernel = np.ones((3, 3), np.uint8)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * close + 1, 2 * close + 1))
    boxes = {k: sl for k, sl in enumerate(ndi.find_objects(labels), start=1) if sl is not None}

    def convexity(k: int, j: int) -> float:
        if k not in boxes or j not in boxes:
            return 0.0
        box = tuple(slice(max(min(a.start, b.start) - close, 0), max(a.stop, b.stop) + close)
                    for a, b in zip(boxes[k], boxes[j]))
        union = np.isin(labels[box], (k, j)).astype(np.uint8)
        if close:
            union = cv2.morphologyEx(np.pad(union, close), cv2.MORPH_CLOSE, disk)[close:-close, close:-close]
        return _solidity(ndi.binary_fill_holes(union.astype(bool)))

    def score(k: int) -> dict[int, float]:
        """How surely region k is one nucleus with each neighbour (>1: enclosed by it)."""
        sl = ndi.find_objects((regions == k).astype(np.int32))
        if not sl:
            return {}
        grown = tuple(slice(max(a.start - 1, 0), a.stop + 1) for a in sl[0])
        piece = regions[grown] == k
        ring = cv2.dilate(piece.astype(np.uint8), kernel).astype(bool) & ~piece
        shared = np.bincount(regions[grown][ring], minlength=int(regions.max()) + 1)
        return {int(j): 2.0 if shared[j] >= enclosed * ring.sum() else convexity(k, int(j))
                for j in np.flatnonzero(shared[1:]) + 1 if j != k}

    scores = {k: score(k) for k in np.unique(regions[regions > 0]).tolist()}
    while True:
        candidates = [(v, k, j) for k, row in scores.items() for j, v in row.items() if v >= solidity]
        if not candidates:
            return labels
        value, k, j = max(candidates)
        keep, gone = (j, k) if value > 1.0 else (min(k, j), max(k, j))  # an enclosed piece joins its host
        labels[labels == gone] = keep
        regions[regions == gone] = keep
        sl = ndi.find_objects((labels == keep).astype(np.int32))
        if sl:
            boxes[keep] = sl[0]
            labels[sl[0]][ndi.binary_fill_holes(labels[sl[0]] == keep) & (labels[sl[0]] == 0)] = keep
        boxes.pop(gone, None)
        scores.pop(gone, None)
        for row in scores.values():
            row.pop(gone, None)
        scores[keep] = score(keep)
        for neighbour in scores[keep]:  # the neighbours see the merged nucleus anew
            scores[neighbour] = score(neighbour)


def _refine(labels: np.ndarray, signal: np.ndarray, fraction: float) -> np.ndarray:
    """Each nucleus keeps its pixels above ``fraction`` of its own brightness (90th percentile),
    its largest connected piece, holes filled."""
    n = int(labels.max())
    if n == 0 or fraction <= 0:
        return labels
    order = np.argsort(labels.ravel(), kind="stable")
    values = signal.ravel()[order]
    bounds = np.searchsorted(labels.ravel()[order], np.arange(n + 2))
    peak = np.zeros(n + 1, np.float32)
    for k in range(1, n + 1):  # one sort, then a slice per nucleus
        chunk = values[bounds[k] : bounds[k + 1]]
        peak[k] = np.percentile(chunk, 90) if chunk.size else 0.0
    refined = np.where(signal > fraction * peak[labels], labels, 0)
    out = np.zeros_like(refined)
    for k, sl in enumerate(ndi.find_objects(refined), start=1):
        if sl is None:
            continue
        piece = refined[sl] == k
        parts, count = ndi.label(piece)
        if count > 1:
            sizes = np.bincount(parts.ravel())
            sizes[0] = 0
            piece = parts == np.argmax(sizes)
        out[sl][ndi.binary_fill_holes(piece) & (out[sl] == 0)] = k
    return out


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
