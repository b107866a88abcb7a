"""Predict a folder of test images: the loop behind ``predict.py``.

The CPU side (read, segment, crop, RLE-encode; :mod:`prepare`) runs in worker processes a few
images ahead of the main process, which only runs the models, so the accelerator does not wait
on the CPU when the CPU can keep up. Each scored image goes to the cache at once; the CSV is
written atomically at the end, rows in the sample submission's order. Under a time budget
(:mod:`budget`) each group of images is scored with the plan in force, and the plan is
reconsidered after it.
"""

from __future__ import annotations

import collections
import hashlib
import io as _io
import json
import multiprocessing as mp
import posixpath
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from hpa_tf import fs, viz
from hpa_tf.cli import require_writable
from hpa_tf.data.contract import segmenter_kind
from hpa_tf.inference import cache
from hpa_tf.inference.budget import LEDGER, TimeBudget, format_duration
from hpa_tf.inference.combine import CELL_SOURCES, Combination, cell_geometry, combine, to_ranks
from hpa_tf.inference.plan import CELL_VIEW, DEFAULT_ORDER, TTA, Plan, applicable, model_piece, parse_drop_order
from hpa_tf.inference.predictor import Predictor
from hpa_tf.inference.prepare import Prepared, PrepareSpec, prepare_image
from hpa_tf.io import has_any_channel, probe_size, read_image, scan_image_ids, to_8bit_view
from hpa_tf.lock import FolderLock
from hpa_tf.models import read_contract
from hpa_tf.rle import decode_mask, encode_label_image
from hpa_tf.segmentation import check_segmenter, runs_on_accelerator
from hpa_tf.segmentation.runner import segment_folder
from hpa_tf.submission import ImagePrediction, write_submission
from hpa_tf.training.strategy import configure_logical_cpus, get_strategy
from hpa_tf.truth import Truth
from hpa_tf.workers import die_with_parent

STAGES = ("read", "segment", "crop", "infer", "encode")
OVERLAY_SIDE = 768  # overlay pictures are shrunk to this side


class PredictionError(RuntimeError):
    """A prediction run whose output would be useless (every image failed); the message says where to look."""


@dataclass
class RunConfig:
    """The settings of one prediction run (``predict.py``'s flags)."""

    data: str
    models: list[str]
    out: str
    segmenter: str | None = None  # None: the one the models were trained with (their input contracts)
    tta: str = "none"
    combine: Combination = field(default_factory=Combination)
    weights: list[float] | None = None
    cell_view: str = "masked"
    batch: int = 16
    workers: int = 1
    sample_submission: str | None = None
    cache: str | None = None
    overwrite: bool = False
    overlays: int = 4
    truth: str | None = None
    truth_split: str = "test"
    strategy: str = "auto"  # the names train_tpu.py takes: auto | tpu | mirrored | cpu | cpu_mirrored
    logical_cpus: int = 0
    jit: bool = False
    precision: str = "float32"  # float32 | mixed_float16 | mixed_bfloat16 | keep
    group: int = 8  # images scored together: their cells share the models' batches
    force: bool = False  # predict even when the segmenter differs from the models' training
    time_budget: float | None = None  # seconds for the whole run (budget.py); None: no budget
    budget_drop: str = DEFAULT_ORDER  # the order in which the budget drops work (plan.parse_drop_order)

    @property
    def cache_dir(self) -> str:
        return self.cache or f"{self.out}.cache"


def image_order(data: str, sample_submission: str | None,
                check_files: bool = False) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """IDs in the sample submission's order (with its sizes), else every complete image of ``data``.
    ``check_files``: an ID of the sample submission with no file in ``data`` is an error naming it
    (an all-empty submission would otherwise look like a success)."""
    if sample_submission:
        df = pd.read_csv(_io.StringIO(fs.read_text(sample_submission)), dtype={"ID": str})
        missing = {"ID", "ImageWidth", "ImageHeight"} - set(df.columns)
        if missing:
            raise ValueError(f"{sample_submission}: no column(s) {sorted(missing)}; expected the competition's "
                             "ID,ImageWidth,ImageHeight,PredictionString")
        ids = list(df["ID"])
        sizes = df[["ImageWidth", "ImageHeight"]].apply(pd.to_numeric, errors="coerce")
        bad = df["ID"][~(sizes > 0).all(axis=1) | (sizes % 1 != 0).any(axis=1)].tolist()
        if bad:
            raise ValueError(f"{sample_submission}: ImageWidth/ImageHeight of {len(bad)} rows are no positive whole "
                             f"numbers ({', '.join(map(str, bad[:3]))}{', ...' if len(bad) > 3 else ''}): each row "
                             "gives its image's size in pixels")
        if check_files:
            if not fs.exists(data):
                raise FileNotFoundError(f"--data {data}: no such folder")
            absent = [i for i in ids if not has_any_channel(data, i)]
            if absent:
                shown = ", ".join(absent[:3]) + (", ..." if len(absent) > 3 else "")
                raise FileNotFoundError(f"{len(absent)} of {len(ids)} images of {sample_submission} have no file in "
                                        f"{data} ({shown}; looked for {{ID}}_red/green/blue/yellow.png/.tif/.jpg, "
                                        "any letter case): is --data the folder of the test images?")
        return ids, {i: (int(w), int(h)) for i, w, h in zip(df["ID"], sizes["ImageWidth"], sizes["ImageHeight"])}
    if not fs.exists(data):
        raise FileNotFoundError(f"--data {data}: no such folder")
    ids = scan_image_ids(data, complete=False)  # an image missing a channel still gets its row and an error
    if not ids:
        raise FileNotFoundError(f"no images in {data}: expected {{ID}}_red/green/blue/yellow.png (or .tif/.jpg)")
    return ids, {}


def _prepared_stream(spec: PrepareSpec, ids: Sequence[str], workers: int) -> Iterator[Prepared]:
    """Prepared images in order; with workers, at most 2 per worker are in flight (bounded memory)."""
    if workers <= 0:
        yield from (prepare_image(spec, i) for i in ids)
        return
    # spawn: TensorFlow in this process does not survive fork
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent) as pool:
        pending: collections.deque = collections.deque()
        todo = iter(ids)
        for image_id in todo:
            pending.append(pool.submit(prepare_image, spec, image_id))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(prepare_image, spec, nxt))
            yield done


def _cache_key(cfg: RunConfig, predictor: Predictor) -> dict:
    # A retrained model of the same architecture has the same size: identify it by its content.
    models = [{"path": path, "sha256": hashlib.sha256(fs.read_bytes(path)).hexdigest()} for path in cfg.models]
    # The images' folder too: two folders with the same IDs (two SynthHPA sets of one seed) must not
    # share scores, masks and sizes.
    return {"models": models, "segmenter": cfg.segmenter, "tta": cfg.tta, "cell_view": cfg.cell_view,
            "sizes": [[m.kind, m.size] for m in predictor.models], "precision": cfg.precision,
            "data": fs.canonical(cfg.data)}


def resolve_segmenter(given: str | None, contracts: dict[str, dict | None], force: bool = False) -> str:
    """The segmenter of a prediction run: ``given``, or the one the models were trained with. A
    segmenter of another kind than the models' training (classical vs hpacellseg) is refused, since
    the cells would not be those the models learnt from, unless ``force``; masks given as
    ``precomputed:`` may come from either, so they pass.

    >>> resolve_segmenter(None, {"m.keras": {"segmenter": "classical"}})
    'classical'
    """
    trained = {path: c["segmenter"] for path, c in contracts.items() if c and c.get("segmenter")}
    kinds = {segmenter_kind(s) for s in trained.values()}
    if given is None:
        if kinds <= {"classical"}:
            return "classical"
        raise ValueError(f"the models were trained on cells from {sorted(set(trained.values()))}: give --segmenter "
                         "of that kind (hpacellseg:nuclei=PATH,cell=PATH, or precomputed:MASKS of the test images)")
    kind = segmenter_kind(given)
    other = sorted(kinds - {kind, "precomputed"}) if kind != "precomputed" else []
    if other and not force:
        models = ", ".join(f"{path} ({s})" for path, s in trained.items())
        raise ValueError(f"--segmenter {given} is not the {' or '.join(other)} segmenter the models were trained with "
                         f"({models}): their cells would differ from training; pass --force to predict anyway")
    return given


def score_images(cfg: RunConfig, predictor: Predictor, ids: Sequence[str], budget: TimeBudget | None = None,
                 sizes: dict[str, tuple[int, int]] | None = None,
                 finish: Callable[[list[str]], float] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Score every image of ``ids`` not yet cached; returns the total seconds per stage and the
    images that failed (``{"ID", "error"}``). With a ``budget``, each group is scored under its plan
    and measured (images of ``sizes``, else their files' size); ``finish(ids)`` times the final
    assembly of those images."""
    todo = [i for i in ids if not cache.is_cached(cfg.cache_dir, i)]
    if len(todo) < len(ids):
        print(f"{len(ids) - len(todo)} of {len(ids)} images already scored in {cfg.cache_dir}")
    totals = dict.fromkeys(STAGES, 0.0)
    totals["images"] = 0
    errors: list[dict] = []
    spec = predictor.prepare_spec(cfg.data)
    group: list[Prepared] = []
    waits: list[float | None] = []  # the seconds the models waited for each image of the group
    sizes = sizes or {}
    clock = predictor.clock
    consumed = 0  # images of todo taken from the stream
    warmed: list = []  # the plans whose model calls are traced already

    def pixels(image_id: str, fallback: tuple[int, int] = (0, 0)) -> float:
        w, h = sizes.get(image_id, fallback)
        return float(w * h)

    def flush() -> None:
        t = time.perf_counter()
        plan = budget.plan if budget is not None else None
        if budget is not None and plan not in warmed:  # tracing is not scoring: keep it out of the measure
            predictor.score_many(group[:1], plan)
            warmed.append(plan)
        predictor.seconds.clear()
        start = clock()
        scored = predictor.score_many(group, plan)
        totals["infer"] += time.perf_counter() - t
        for prepared, scores in zip(group, scored):
            cache.save(cfg.cache_dir, prepared.image_id, prepared.width, prepared.height, prepared.cell_ids,
                       prepared.masks, scores, plan.dropped if plan is not None else ())
            for stage, sec in prepared.timings.items():
                totals[stage] += sec
            totals["images"] += 1
        if budget is not None:
            budget.record([pixels(p.image_id, (p.width, p.height)) for p in group], waits,
                          [sum(p.timings.values()) for p in group], predictor.seconds, clock() - start, plan)
            if finish is not None and "finish" not in budget.est.totals:
                budget.record_finish(finish([p.image_id for p in group]), len(group))
            if consumed < len(todo):
                budget.decide([pixels(i) for i in todo[consumed:]], len(ids), todo[consumed])
        bar.update(len(group))
        group.clear()
        waits.clear()

    if budget is not None and todo:
        if budget.est.measured:  # a resumed run: its measurements, the time spent and the drops go on
            budget.decide([pixels(i) for i in todo], len(ids), todo[0])
        else:
            tqdm.write(f"time budget {format_duration(budget.seconds)}: the first {min(cfg.group, len(todo))} images "
                       f"are scored with {budget.plan.label()} to measure it")
    with tqdm(total=len(todo), desc="predicting", unit="img") as bar:
        waited = clock()
        for prepared in _prepared_stream(spec, todo, cfg.workers):
            consumed += 1
            if prepared.error:
                errors.append({"ID": prepared.image_id, "error": prepared.error})
                bar.update(1)
                waited = clock()
                continue
            # with workers, the first wait is mostly their start-up: not a measure of one image
            waits.append(None if cfg.workers and consumed == 1 else clock() - waited)
            group.append(prepared)
            if len(group) >= cfg.group:
                flush()
            waited = clock()
        if group:
            flush()
    return totals, errors


def load_cached(cache_dir: str, ids: Sequence[str], n_models: int,
                dropped: dict[str, tuple[str, ...]] | None = None) -> dict[str, cache.Entry]:
    """The cached entries of ``ids`` (images never scored, such as bad files, are absent). A cache
    file that cannot be read is named, removed, and left out: the next run scores that image again.
    ``dropped``, when given, receives each entry's pieces of work left out by a time budget."""
    entries = {}
    for image_id in ids:
        if cache.is_cached(cache_dir, image_id):
            try:
                entries[image_id], left_out = cache.load_with_dropped(cache_dir, image_id, n_models)
            except cache.CacheEntryError as err:
                print(err)
                continue
            if dropped is not None:
                dropped[image_id] = left_out
    return entries


def assemble(entries: dict[str, cache.Entry], ids: Sequence[str], sizes: dict[str, tuple[int, int]],
             rule: str | Combination, weights: Sequence[float], use: Sequence[int] | None = None) -> list[ImagePrediction]:
    """Submission rows from cached entries under a rule or :class:`Combination`; ``use`` picks a
    subset of the models (ablations). An image without an entry gets an empty row of the size
    ``sizes`` gives it. Rank averaging ranks each model's scores over all ``entries``. An image
    whose time-budget plan dropped a model is scored by the models it kept, their weights
    renormalised (an ablation row none of whose models scored it gets an empty row)."""
    combination = Combination.parse(rule)
    scored = [i for i in ids if i in entries]
    all_scores = [entries[i][4] for i in scored]
    if combination.average == "rank":
        all_scores = to_ranks(all_scores)
    by_id = dict(zip(scored, all_scores))
    rows = []
    for image_id in ids:
        if image_id not in entries:
            w, h = sizes[image_id]
            rows.append(ImagePrediction(image_id, w, h))
            continue
        w, h, _, masks, _ = entries[image_id]
        scores = by_id[image_id]
        picked = [k for k in (range(len(scores)) if use is None else use) if scores[k] is not None]
        if not picked:  # an ablation of models only, all dropped for this image by its time-budget plan
            rows.append(ImagePrediction(image_id, *sizes.get(image_id, (w, h))))
            continue
        geometry = cell_geometry(combination, masks, h, w)
        probs = combine([scores[k] for k in picked], len(masks), combination, [weights[k] for k in picked], **geometry)
        if image_id in sizes and sizes[image_id] != (w, h):
            masks, kept = rescale_masks(image_id, masks, (w, h), sizes[image_id])
            w, h, probs = *sizes[image_id], probs[kept]
        rows.append(ImagePrediction.from_scores(image_id, w, h, masks, probs))
    return rows


SHAPE_FIX = "give the test images at their original size or keep their aspect ratio"


def _other_shape(size: tuple[int, int], target: tuple[int, int]) -> bool:
    (w, h), (tw, th) = size, target
    return abs(w * th - h * tw) > 0.01 * max(w * th, h * tw)


def check_shapes(data: str, sizes: dict[str, tuple[int, int]]) -> None:
    """Before any image is scored: every image whose files' header gives another aspect ratio than
    ``sizes`` (the sample submission's width, height) is named in one ValueError (its masks could
    not be scaled to the rows' size). Images without a readable header are left to the run's
    per-image errors.

    >>> check_shapes("data/test", {"abc": (2048, 2048)})  # doctest: +SKIP
    """
    bad = []
    for image_id, target in tqdm(sizes.items(), desc="image sizes", unit="img", leave=False, disable=len(sizes) < 500):
        size = probe_size(data, image_id)
        if size is not None and _other_shape(size, target):
            bad.append(f"image {image_id}: its files are {size[0]}x{size[1]} px, the sample submission says "
                       f"{target[0]}x{target[1]}")
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        raise ValueError(f"{len(bad)} of {len(sizes)} images have another shape than the sample submission "
                         f"says ({shown}): {SHAPE_FIX}")


def rescale_masks(image_id: str, masks: Sequence[str], size: tuple[int, int],
                  target: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """Encoded masks of a ``size`` (width, height) image at the ``target`` size (nearest neighbour):
    test images downsized to save time get their rows at the sample submission's size. Returns the
    masks and the indices of the cells kept (a cell can vanish when shrunk). Another aspect ratio
    is refused in one line naming both sizes.

    >>> lab = np.zeros((4, 4), np.uint16); lab[1:3, 1:3] = 1
    >>> masks, kept = rescale_masks("a", [encode_label_image(lab)[1]], (4, 4), (8, 8))
    >>> int(decode_mask(masks[0], 8, 8).sum()), kept.tolist()
    (16, [0])
    """
    (w, h), (tw, th) = size, target
    if _other_shape(size, target):
        raise ValueError(f"image {image_id}: its files are {w}x{h} px, the sample submission says {tw}x{th} "
                         f"(another shape): {SHAPE_FIX}")
    labels = np.zeros((h, w), np.uint16)
    for k, enc in enumerate(masks):
        labels[decode_mask(enc, h, w)] = k + 1
    big = cv2.resize(labels, (tw, th), interpolation=cv2.INTER_NEAREST)
    encoded = encode_label_image(big)
    kept = np.array([k for k in range(len(masks)) if k + 1 in encoded], np.int64)
    return [encoded[int(k) + 1] for k in kept], kept


def prediction_overlay(image: np.ndarray, rows: ImagePrediction, truth_classes: dict[int, int] | None = None,
                       truth_mask: np.ndarray | None = None) -> np.ndarray:
    """The image with each predicted cell outlined in the colour of its top class (BGR); with the
    truth, the true cells in the colour of their first label, side by side.

    >>> img = np.zeros((16, 16, 4), np.uint8)
    >>> prediction_overlay(img, ImagePrediction("a", 16, 16)).shape
    (16, 16, 3)
    """
    h, w = image.shape[:2]
    labels = np.zeros((rows.height, rows.width), np.uint16)  # the row's size: the sample submission's
    top: dict[int, int] = {}
    for k, enc in enumerate(rows.masks):
        labels[decode_mask(enc, rows.height, rows.width)] = k + 1
        mine = rows.mask_index == k
        if mine.any():
            top[k + 1] = int(rows.classes[mine][np.argmax(rows.confidences[mine])])
    scale = min(1.0, OVERLAY_SIDE / max(h, w))
    size = (max(int(w * scale), 1), max(int(h * scale), 1))
    base = viz.composite(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    left = viz.draw_cells(base, cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST), top)
    if truth_classes is None or truth_mask is None:
        return left
    right = viz.draw_cells(base, cv2.resize(truth_mask, size, interpolation=cv2.INTER_NEAREST), truth_classes)
    return np.concatenate([left, np.full((size[1], 8, 3), 255, np.uint8), right], axis=1)


def short_names(paths: Sequence[str]) -> list[str]:
    """Each path by its file name, or by as many of its last parts as tell it from the others (a
    job's models are all ``best.keras``).

    >>> short_names(["runs/image/split0/best.keras", "runs/cell/split0/best.keras", "x/last.keras"])
    ['image/split0/best.keras', 'cell/split0/best.keras', 'last.keras']
    """
    parts = [p.rstrip("/").split("/") for p in paths]
    out = []
    for i, own in enumerate(parts):
        depth = 1
        while depth < len(own) and any(other[-depth:] == own[-depth:] for j, other in enumerate(parts) if j != i):
            depth += 1
        out.append("/".join(own[-depth:]))
    return out


def _budget(cfg: RunConfig, predictor: Predictor, clock: Callable[[], float], started: float) -> TimeBudget:
    """The run's time budget, resumed from its cache folder's ledger when there is one."""
    n = len(predictor.models)
    kinds = [m.kind for m in predictor.models]
    order = applicable(parse_drop_order(cfg.budget_drop, n), cfg.tta, cfg.cell_view, kinds)
    pieces = applicable([TTA, CELL_VIEW, *(model_piece(k) for k in range(1, n))], cfg.tta, cfg.cell_view, kinds)
    labels = {TTA: f"TTA ({cfg.tta})", CELL_VIEW: f"cell views ({cfg.cell_view})"}
    labels.update({model_piece(k): f"model {k + 1} ({name})" for k, name in enumerate(short_names(cfg.models))})

    def feasible(plan: Plan) -> bool:  # the rule can combine what the plan keeps
        weighted = sum(w for k, w in enumerate(predictor.weights) if plan.uses(k)) > 0
        return weighted and (cfg.combine.rule == "image" or predictor.gives_cells(plan))

    return TimeBudget(cfg.time_budget, order, n, labels=labels, pieces=pieces, workers=cfg.workers, clock=clock,
                      started=started, feasible=feasible, ledger=fs.join(cfg.cache_dir, LEDGER), say=tqdm.write)


def run(cfg: RunConfig, clock: Callable[[], float] = time.monotonic) -> dict:
    """Predict, write the submission and a summary; score it when ``cfg.truth`` is given. ``clock``
    times the work for ``cfg.time_budget`` (a test gives a fake one)."""
    start = time.perf_counter()
    started = clock()
    configure_logical_cpus(cfg.logical_cpus)
    cfg.segmenter = resolve_segmenter(cfg.segmenter, {m: read_contract(m) for m in cfg.models}, cfg.force)
    check_segmenter(cfg.segmenter)
    ids, sizes = image_order(cfg.data, cfg.sample_submission, check_files=True)
    check_shapes(cfg.data, sizes)
    require_writable(posixpath.dirname(cfg.out) or ".", "--out")
    if fs.isdir(cfg.out):
        raise IsADirectoryError(f"--out {cfg.out} is a folder: give the submission's file name (e.g. "
                                f"{fs.join(cfg.out, 'submission.csv')})")
    stem = cfg.out[:-4] if cfg.out.endswith(".csv") else cfg.out
    segmenter = cfg.segmenter
    if runs_on_accelerator(segmenter):  # its models in this process alone, batched, before TensorFlow's
        segment_folder(segmenter, (), cfg.data, f"{stem}.masks", ids, overlays=False)
        segmenter = f"precomputed:{stem}.masks"
    strategy = get_strategy(cfg.strategy)
    distributed = strategy if strategy.num_replicas_in_sync > 1 or isinstance(strategy, tf.distribute.TPUStrategy) else None
    predictor = Predictor.from_models(cfg.models, cfg.weights, strategy=distributed, dtype=cfg.precision,
                                      segmenter=segmenter, tta=cfg.tta, rule=cfg.combine, cell_view=cfg.cell_view,
                                      batch=cfg.batch, jit=cfg.jit, clock=clock)
    if cfg.combine.rule != "image" and not predictor.gives_cells():  # before hours of scoring, not after
        raise ValueError(f"--combine {cfg.combine.rule} needs cell-level scores from a model weighted above 0 "
                         f"({CELL_SOURCES}); these models give image-level scores only: use --combine image")
    n_models = len(predictor.models)
    dropped: dict[str, tuple[str, ...]] = {}
    budget = None

    def finish(group: list[str]) -> float:  # what the end does for these images, timed for the budget
        t = clock()
        assemble(load_cached(cfg.cache_dir, group, n_models), group, sizes, cfg.combine, predictor.weights)
        return clock() - t

    with FolderLock(cfg.cache_dir, "predict.py"):
        key = _cache_key(cfg, predictor)
        cache.check_key(cfg.cache_dir, key, cfg.overwrite)
        if cfg.time_budget is not None:
            budget = _budget(cfg, predictor, clock, started)
        totals, errors = score_images(cfg, predictor, ids, budget, sizes, finish)
        entries = load_cached(cfg.cache_dir, ids, n_models, dropped)
        failed = {e["ID"] for e in errors}
        lost = [i for i in ids if i not in entries and i not in failed]  # unreadable cache files, removed
        if lost:
            more, more_errors = score_images(cfg, predictor, lost, budget, sizes, finish)
            totals = {k: totals[k] + more[k] for k in totals}
            errors += more_errors
            entries.update(load_cached(cfg.cache_dir, lost, n_models, dropped))
        if budget is not None:
            budget.save()  # the time spent, for a run that goes on from this cache
    errors += fill_sizes(cfg.data, ids, entries, sizes)
    rows = assemble(entries, ids, sizes, cfg.combine, predictor.weights)
    write_submission(cfg.out, rows)
    if errors:
        fs.write_text(f"{stem}.errors.csv", pd.DataFrame(errors, columns=["ID", "error"]).to_csv(index=False))
        print(f"{len({e['ID'] for e in errors})} images could not be predicted (empty rows); see {stem}.errors.csv")
    else:
        fs.remove(f"{stem}.errors.csv")  # from an earlier run whose bad images are fixed now
    n = max(int(totals["images"]), 1)
    config = asdict(cfg)  # its paths absolute: the report and benchmarks read them from other folders
    config.update({k: fs.absolute(config[k]) for k in ("data", "out", "sample_submission", "truth") if config[k]})
    config.update(models=[fs.absolute(m) for m in cfg.models], cache=fs.absolute(cfg.cache_dir))
    summary = {
        "config": config,
        "cache_key": key,  # what scored the cache's entries now: a later run may replace them (--overwrite)
        "images": len(ids), "scored_now": int(totals["images"]), "errors": len(errors),
        "cells": int(sum(len(r.masks) for r in rows)),
        "seconds_per_image": {s: totals[s] / n for s in STAGES},
        "wall_s": time.perf_counter() - start,
    }
    reduced = {i: d for i, d in dropped.items() if d}
    if budget is not None:
        summary["budget"] = budget.summary(dropped)
        print(budget.summary_text(summary["budget"]))
    elif reduced:  # scored under an earlier run's budget: the record says so
        summary["budget"] = {"dropped_per_image": {i: list(d) for i, d in reduced.items()}}
        print(f"{len(reduced)} images in {cfg.cache_dir} were scored under an earlier run's --time-budget without "
              "some of the work (summary.json lists them); --overwrite scores every image anew")
    truth = None
    if cfg.truth:
        from hpa_tf.metrics import evaluate

        truth = Truth.load(cfg.truth, cfg.truth_split)
        result = evaluate(truth, rows)
        print(result.table())
        summary["map"] = result.map
        summary["metric"] = result.to_dict()
    _write_overlays(cfg.data, rows[: cfg.overlays], stem, truth)
    fs.write_text(f"{stem}.summary.json", json.dumps(summary, indent=2))
    per = summary["seconds_per_image"]
    timing = (", ".join(f"{s} {per[s]:.3f} s" for s in STAGES) if totals["images"]
              else "nothing scored" if errors else "all scores from the cache")
    print(f"wrote {cfg.out}: {len(rows)} images, {summary['cells']} cells; per image: {timing}"
          + (f"; mAP {summary['map']:.4f}" if cfg.truth else ""))
    if ids and len({e["ID"] for e in errors}) == len(ids):
        raise PredictionError(f"every one of the {len(ids)} images failed (their rows are empty); {stem}.errors.csv says "
                              "why for each")
    return summary


def fill_sizes(data: str, ids: Sequence[str], entries: dict[str, cache.Entry],
                sizes: dict[str, tuple[int, int]]) -> list[dict]:
    """Give every image without scores a size for its (empty) row: the sample submission's, else
    the one its files' headers say, else the most common size of the run (noted as an error)."""
    known = [(e[0], e[1]) for e in entries.values()]
    common = collections.Counter(known).most_common(1)[0][0] if known else (2048, 2048)
    notes = []
    for image_id in ids:
        if image_id in entries or image_id in sizes:
            continue
        size = probe_size(data, image_id)
        if size is None:
            size = common
            notes.append({"ID": image_id, "error": f"no channel file says its size: the row uses {size[0]}x{size[1]}"})
        sizes[image_id] = size
    return notes


def _write_overlays(data: str, rows: list[ImagePrediction], stem: str, truth: Truth | None) -> None:
    for row in rows:
        if not row.masks:
            continue
        image = to_8bit_view(read_image(data, row.image_id, dtype="native"))
        true_classes = truth_mask = None
        if truth is not None and row.image_id in truth.cell_labels:
            truth_mask = truth.mask(row.image_id)
            true_classes = {c: labs[0] for c, labs in truth.cell_labels[row.image_id].items() if labs}
        viz.write_png(f"{stem}.overlays/{row.image_id}.png", prediction_overlay(image, row, true_classes, truth_mask))
