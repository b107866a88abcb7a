"""Keep a prediction run within a time budget (``predict.py --time-budget 8h30m``).

The first ``--group`` images are scored with all the work, each piece timed: the CPU side
(reading, segmenting, cutting: the time the models wait for it, per pixel), each model's call, its
TTA transforms and its cell views (per image), caching, and assembling the submission. From these
:func:`project` gives the total for the images left, by their size (the sample submission's), and
:class:`TimeBudget` drops pieces of work (:mod:`plan`) in the order given until the projection fits.
After every group it projects again and drops the next piece when the run would overrun; it never
adds work back and never leaves an image out. The minimum plan (segmentation and the first model,
without TTA) runs to the end even when it overruns, and says so.

A killed run resumed with a budget goes on from ``budget.json`` in its cache folder: the time
already spent counts, the pieces dropped stay dropped, the measurements are kept. The clock is
injectable (``time.monotonic`` by default), so a test does not depend on the machine's speed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hpa_tf import fs
from hpa_tf.inference.plan import CELL_VIEW, TTA, Plan, model_piece

LEDGER = "budget.json"
PARTS = ("base", "tta", "view", "view_tta")  # of each model's calls, as Predictor.seconds names them
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration: ``8h30m``, ``90m``, ``2h``, ``3600s``, ``1h15m30s`` or plain seconds.

    >>> parse_duration("8h30m"), parse_duration("90m"), parse_duration("3600"), parse_duration("1.5h")
    (30600.0, 5400.0, 3600.0, 5400.0)
    >>> parse_duration("1h70m")
    Traceback (most recent call last):
    ValueError: '1h70m' is not a duration: give e.g. 8h30m, 90m, 2h, 3600s or 3600 (seconds)
    """
    spec = text.strip().lower()
    units = re.findall("[hms]", spec)
    if re.fullmatch(r"\d+(\.\d+)?", spec):
        seconds = float(spec)
    elif (re.fullmatch(r"(\d+(\.\d+)?[hms])+", spec) and units == sorted(set(units), key="hms".index)
          and all(float(n) < 60 for n, _, _ in re.findall(r"(\d+(\.\d+)?)([hms])", spec)[1:])):
        # 1h1h, 30m1h and 1h70m are typos; a first part may be large (90m)
        seconds = sum(float(n) * _UNIT[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([hms])", spec))
    else:
        raise ValueError(f"{text!r} is not a duration: give e.g. 8h30m, 90m, 2h, 3600s or 3600 (seconds)")
    if seconds <= 0:
        raise ValueError(f"{text!r}: the time budget must be more than 0 seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """``format_duration(30600)`` -> ``'8h30m00s'``; under a minute: ``'42.0s'``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    return f"{h}h{rest // 60:02d}m{rest % 60:02d}s" if h else f"{rest // 60}m{rest % 60:02d}s"


@dataclass
class Estimates:
    """Seconds measured so far. ``totals[key] = [seconds, images]``: the work done once per image,
    whatever its size: ``model:N`` (model N's calls), ``model:N/tta``, ``model:N/view`` (its cell
    views), ``model:N/view_tta``, ``other`` (caching) and ``finish`` (reading the cache back and
    writing the submission at the end). ``images[key] = [[seconds, pixels], ...]``: the CPU side,
    which grows with the pixels, per image: ``prepare`` (the models waiting for it) and ``cpu`` (its
    own seconds, in the worker processes).
    """

    totals: dict[str, list[float]] = field(default_factory=dict)
    images: dict[str, list[list[float]]] = field(default_factory=dict)

    def add(self, key: str, seconds: float, images: int) -> None:
        row = self.totals.setdefault(key, [0.0, 0.0])
        row[0] += seconds
        row[1] += images

    def add_image(self, key: str, seconds: float, pixels: float) -> None:
        self.images.setdefault(key, []).append([seconds, pixels])

    def per_image(self, key: str) -> float:
        seconds, images = self.totals.get(key, (0.0, 0.0))
        return seconds / images if images else 0.0

    def per_pixel(self, key: str) -> float:
        """The median seconds per pixel: the first image a process prepares also loads its
        libraries, an outlier a mean would spread over the whole run."""
        rates = [s / p for s, p in self.images.get(key, []) if p > 0]
        return float(np.median(rates)) if rates else 0.0

    def mean_pixels(self) -> float:
        sizes = [p for _, p in self.images.get("cpu", [])]
        return sum(sizes) / len(sizes) if sizes else 0.0

    @property
    def measured(self) -> bool:
        return "other" in self.totals


def model_seconds(est: Estimates, plan: Plan, n_models: int) -> float:
    """Seconds per image of the models' work ``plan`` keeps (without cell views an image model scores
    cells from its CAM, in about the time of its image call).

    >>> est = Estimates({"model:1": [2.0, 1], "model:1/tta": [2.0, 1], "model:2": [1.0, 1]})
    >>> model_seconds(est, Plan(), 2), model_seconds(est, Plan(("tta", "model:2")), 2)
    (5.0, 2.0)
    """
    total = 0.0
    for k in range(n_models):
        if not plan.uses(k):
            continue
        key = model_piece(k)
        total += est.per_image(key) + (est.per_image(f"{key}/tta") if plan.tta else 0.0)
        if plan.cell_view:
            total += est.per_image(f"{key}/view") + (est.per_image(f"{key}/view_tta") if plan.tta else 0.0)
    return total


def project(est: Estimates, plan: Plan, pixels: Sequence[float], n_models: int, workers: int = 0) -> float:
    """Seconds to score images of ``pixels`` (width x height each) under ``plan``: the CPU side
    scales with the pixels (reading and segmenting do); the models' work does not (their inputs
    are cut to fixed sizes). With ``workers`` the CPU side runs beside the models: an image takes
    at least its CPU seconds shared among the workers.

    >>> est = Estimates({"model:1": [2.0, 2]}, {"prepare": [[2.0, 1728**2], [2.0, 1728**2]]})
    >>> project(est, Plan(), [1728**2], 1), round(project(est, Plan(), [3072**2], 1), 3)
    (3.0, 7.321)
    """
    models = model_seconds(est, plan, n_models) + est.per_image("other")
    prepare, cpu = est.per_pixel("prepare"), est.per_pixel("cpu")
    total = 0.0
    for p in pixels:
        serial = prepare * p + models
        total += max(serial, cpu * p / workers) if workers > 0 else serial
    return total


class TimeBudget:
    """The budget of one prediction run: measurements, the plan, and what was dropped when.

    >>> budget = TimeBudget(3600, ["tta"], 1, clock=lambda: 0.0, say=lambda text: None)
    >>> parts = {(0, "base"): 1.0, (0, "tta"): 7.0}  # one image: 1 s waiting for the CPU, 1 s of model, 7 s of TTA
    >>> budget.record([2048**2], [1.0], [1.0], parts, 8.0, Plan())
    >>> budget.decide([2048**2] * 600, 601)  # 600 x 9 s is over the hour; without TTA, 600 x 2 s fits
    ['tta']
    """

    def __init__(self, seconds: float, order: Sequence[str], n_models: int, *, labels: Mapping[str, str] | None = None,
                 pieces: Sequence[str] | None = None, feasible: Callable[[Plan], bool] = lambda plan: True, workers: int = 0,
                 clock: Callable[[], float] = time.monotonic, started: float | None = None,
                 ledger: str | None = None, say: Callable[[str], None] = print):
        self.seconds, self.order, self.n_models = float(seconds), list(order), n_models
        self.labels = dict(labels or {})
        # every optional piece the run has, those the order never drops too: the plan lists them all as kept
        self.pieces = list(order if pieces is None else pieces)
        self.feasible, self.workers, self.clock, self.say = feasible, workers, clock, say
        self.started = clock() if started is None else started
        self.ledger = ledger
        self.spent_before = 0.0
        self.plan = Plan()
        self.est = Estimates()
        self.events: list[dict] = []
        self.first: dict | None = None  # the plan as first said in this run
        self.warned = False
        self.resumed = bool(ledger and fs.exists(ledger))
        if self.resumed:
            state = json.loads(fs.read_text(ledger))
            self.spent_before = float(state["spent_s"])
            self.plan = Plan(tuple(state["dropped"]))
            self.est = Estimates(state["estimates"]["totals"], state["estimates"]["images"])
            self.events = list(state["events"])

    # --- time -----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds spent: by this run since it started, and by the runs it resumes."""
        return self.spent_before + self.clock() - self.started

    def label(self, piece: str) -> str:
        return self.labels.get(piece, piece)

    # --- measuring ------------------------------------------------------------------------------
    def record(self, pixels: Sequence[float], waits: Sequence[float | None], cpu: Sequence[float],
               parts: Mapping[tuple[int, str], float], flush_seconds: float, plan: Plan) -> None:
        """One group scored under ``plan``: each image's pixels, the seconds the models waited for
        it (None: not a measure, such as the wait for the worker processes to start) and its CPU
        seconds; the models' seconds by (model, part); the whole scoring's seconds."""
        n = len(pixels)
        for wait, c, p in zip(waits, cpu, pixels):
            if wait is not None:
                self.est.add_image("prepare", wait, p)
            self.est.add_image("cpu", c, p)
        measured = {"base": True, "tta": plan.tta, "view": plan.cell_view, "view_tta": plan.tta and plan.cell_view}
        for k in range(self.n_models):
            if not plan.uses(k):
                continue
            for part in PARTS:
                if measured[part]:  # a part the plan ran but that had nothing to do costs 0 on these images
                    key = model_piece(k) + ("" if part == "base" else f"/{part}")
                    self.est.add(key, parts.get((k, part), 0.0), n)
        self.est.add("other", max(flush_seconds - sum(parts.values()), 0.0), n)

    def record_finish(self, seconds: float, images: int) -> None:
        """Seconds to read ``images`` back from the cache and make their rows (done once for all at the end)."""
        self.est.add("finish", seconds, images)

    # --- planning -------------------------------------------------------------------------------
    def projected(self, plan: Plan, remaining: Sequence[float], n_images: int, elapsed: float | None = None) -> float:
        """The run's total under ``plan``: ``elapsed`` (default: now), the ``remaining`` images by
        their pixels (0: unknown size, taken as the mean measured), the final assembly of all ``n_images``."""
        mean = self.est.mean_pixels()
        pixels = [p or mean for p in remaining]
        spent = self.elapsed() if elapsed is None else elapsed
        return (spent + project(self.est, plan, pixels, self.n_models, self.workers)
                + self.est.per_image("finish") * n_images)

    def ladder(self, remaining: Sequence[float], n_images: int, elapsed: float) -> list[tuple[Plan, float, str]]:
        """From the current plan, each further piece of the order dropped in turn: (plan, projected
        total, note); a piece the combination rule cannot do without is kept (noted)."""
        plan = self.plan
        steps = [(plan, self.projected(plan, remaining, n_images, elapsed), "")]
        for piece in self.order:
            if piece in plan.dropped:
                continue
            candidate = plan.drop(piece)
            if not self.feasible(candidate):
                steps.append((plan, steps[-1][1], f"{self.label(piece)} kept: the combination rule needs it"))
                continue
            plan = candidate
            steps.append((plan, self.projected(plan, remaining, n_images, elapsed), ""))
        return steps

    def decide(self, remaining: Sequence[float], n_images: int, at: str = "") -> list[str]:
        """Drop the pieces needed, in order, for the projection to fit (the first call of a run says
        the whole plan); returns the pieces dropped now. ``remaining``: the pixels of the images
        left, ``at``: the next image's ID (for the record)."""
        elapsed = self.elapsed()
        steps = self.ladder(remaining, n_images, elapsed)
        chosen = next((s for s in steps if s[1] <= self.seconds), steps[-1])
        now = [p for p in chosen[0].dropped if p not in self.plan.dropped]
        for piece in now:
            self.events.append({"piece": piece, "label": self.label(piece), "from_image": at,
                                "elapsed_s": round(elapsed, 3), "projected_s": round(steps[0][1], 3),
                                "images_left": len(remaining)})
        self.plan = chosen[0]
        if self.first is None:
            self.first = {"projected_s": chosen[1], "ladder": [[s[0].label(), s[1], s[2]] for s in steps],
                          "dropped": list(self.plan.dropped)}
            self.say(self.plan_text(steps, chosen, remaining, n_images, elapsed))
        elif now:
            self.say(f"time budget: projected {format_duration(steps[0][1])} > {format_duration(self.seconds)} with "
                     f"{len(remaining)} images left: dropping {', '.join(self.label(p) for p in now)} for them "
                     f"(projected now {format_duration(chosen[1])})")
        if chosen[1] > self.seconds and not self.warned:
            self.warned = True
            self.say(self.overrun_text(chosen[1]))
        self.save()
        return now

    # --- saying ---------------------------------------------------------------------------------
    def piece_rows(self) -> list[tuple[str, float]]:
        """(what, seconds per image) of every piece measured, as the plan shows them."""
        mean = self.est.mean_pixels()
        rows = [("read + segment + prepare: models waiting for the CPU", self.est.per_pixel("prepare") * mean)]
        if self.workers > 0:
            shared = f"{self.workers} workers share them" if self.workers > 1 else "1 worker"
            rows.append((f"  CPU seconds of one image ({shared})", self.est.per_pixel("cpu") * mean))
        for k in range(self.n_models):
            key = model_piece(k)
            rows.append((self.label(key) if k else f"{self.label(key)} (the minimum plan)", self.est.per_image(key)))
            for part, what in (("tta", self.label(TTA)), ("view", self.label(CELL_VIEW)),
                               ("view_tta", f"{self.label(TTA)} of the {self.label(CELL_VIEW)}")):
                if f"{key}/{part}" in self.est.totals and self.est.per_image(f"{key}/{part}") > 0:
                    rows.append((f"  + {what}", self.est.per_image(f"{key}/{part}")))
        rows.append(("caching the scores", self.est.per_image("other")))
        rows.append(("reading back and writing the submission (at the end)", self.est.per_image("finish")))
        return rows

    def plan_text(self, steps, chosen, remaining: Sequence[float], n_images: int, elapsed: float) -> str:
        mean = self.est.mean_pixels()
        side = f", images of {mean ** 0.5:.0f} px on average" if mean else ""
        lines = [f"=== time budget {format_duration(self.seconds)}: the plan "
                 f"(measured on {int(self.est.totals.get('other', [0, 0])[1])} images{side}) ===",
                 "  seconds per image:"]
        lines += [f"    {what:<62} {sec:9.3f}" for what, sec in self.piece_rows()]
        lines.append(f"  the CPU side scales with each image's pixels; spent so far {format_duration(elapsed)}; "
                     f"{len(remaining)} of {n_images} images left")
        lines.append("  projected total:")
        for plan, total, note in steps:
            if note:
                lines.append(f"    ({note})")
                continue
            mark = "  <- the plan" if plan == chosen[0] else ""
            fits = "fits" if total <= self.seconds else "over"
            lines.append(f"    {plan.label():<50} {format_duration(total):>10} ({fits}){mark}")
        kept = [self.label(p) + ("" if p in self.order else " (not in the order: never dropped)")
                for p in self.pieces if p not in chosen[0].dropped] or ["nothing optional"]
        lines.append(f"  keeps: {self.label(model_piece(0))}, " + ", ".join(kept))
        lines.append("  drops: " + (", ".join(self.label(p) for p in chosen[0].dropped) or "nothing"))
        return "\n".join(lines)

    def overrun_text(self, projected: float) -> str:
        bar = "!" * 100
        return (f"{bar}\n!!! TIME BUDGET OVERRUN: the minimum plan this run allows ({self.plan.label()}) is projected "
                f"at {format_duration(projected)}, over the budget of {format_duration(self.seconds)}.\n"
                "!!! It runs to the end anyway: every image gets its row. Give more time, fewer or faster models, "
                f"or smaller images.\n{bar}")

    # --- record ---------------------------------------------------------------------------------
    def save(self) -> None:
        """The ledger a resumed run goes on from (time spent, pieces dropped, measurements)."""
        if self.ledger:
            fs.write_text(self.ledger, json.dumps({
                "budget_s": self.seconds, "order": self.order, "spent_s": self.elapsed(),
                "dropped": list(self.plan.dropped), "events": self.events,
                "estimates": {"totals": self.est.totals, "images": self.est.images}}, indent=1))

    def summary(self, dropped_per_image: Mapping[str, Sequence[str]]) -> dict:
        """The record of the run for ``OUT.summary.json``; ``dropped_per_image``: every image's
        dropped pieces (``()``: all the work)."""
        by_plan: dict[str, int] = {}
        for pieces in dropped_per_image.values():
            name = Plan(tuple(pieces)).label()
            by_plan[name] = by_plan.get(name, 0) + 1
        return {
            "budget_s": self.seconds, "spent_s": round(self.elapsed(), 3), "overrun": self.elapsed() > self.seconds,
            "order": self.order, "resumed": self.resumed,
            "seconds_per_image": {k: round(self.est.per_image(k), 6) for k in self.est.totals},
            "seconds_per_megapixel": {k: round(self.est.per_pixel(k) * 1e6, 6) for k in self.est.images},
            "plan": self.first, "dropped": self.events, "images_by_plan": by_plan,
            "dropped_per_image": {i: list(p) for i, p in dropped_per_image.items() if p},
        }

    def summary_text(self, record: Mapping) -> str:
        """One paragraph for the end of the run, from :meth:`summary`'s ``record``."""
        counts = "; ".join(f"{n} images {name}" for name, n in record["images_by_plan"].items())
        by_image: dict[str, list[str]] = {}
        for event in self.events:
            by_image.setdefault(event["from_image"], []).append(event["label"])
        drops = "; ".join(f"dropped {', '.join(labels)} from image {i} on" for i, labels in by_image.items())
        text = (f"time budget {format_duration(self.seconds)}: spent {format_duration(record['spent_s'])}; {counts}; "
                f"{drops or 'nothing dropped'}")
        if record["overrun"]:
            text += f"\n!!! OVER THE TIME BUDGET by {format_duration(record['spent_s'] - self.seconds)} !!!"
        return text
