"""Download the public HPA images listed in ``kaggle_2021.tsv`` into the competition's layout.

    python -m hpa_tf.download --list kaggle_2021.tsv --out external/ [--labels 11,15] \\
        [--cell-lines "U-2 OS,A-431"] [--include-in-trainset] [--dedup-against train/] \\
        [--source jpg|tif] [--size 1024] [--keep-tif] [--workers 16] [--limit N]

Writes ``OUT/train/{ID}_{red,green,blue,yellow}.png`` (at the served bit depth: 8-bit from the
JPEGs, 16-bit from the TIFFs, resized to ``--size`` if given; or the 16-bit ``.tif`` as served with
``--keep-tif``), then
``OUT/train.csv`` (``ID,Label`` in the 2021 form plus ``Cellline``, ``in_trainset``, ``Image``),
``OUT/errors.csv`` and ``OUT/duplicates.csv``. Each image is fetched in parallel with the others,
every file retried with backoff, checked (it decodes, its four channels agree in size), and written
under a temporary name then renamed; a per-image state file written last marks it done, so a killed
download resumes where it stopped and a rerun retries only the failures. The exit status is 1 when
any image failed. ``OUT/download.json`` keeps ``--size``, ``--source`` and ``--keep-tif``: a rerun
with other values is refused (the folder would mix sizes).

De-duplication: rows with ``in_trainset`` true are skipped (``--include-in-trainset`` keeps them), and
with ``--dedup-against DIR`` (the competition's ``train/``) an image whose content matches a training
image (a fingerprint of its nuclei and protein channels, :mod:`hpa_tf.download.dedup`) is not
kept; nor is an image that matches one downloaded before.
"""

from __future__ import annotations

import io as _io
import json
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from hpa_tf import fs
from hpa_tf.cli import require_writable
from hpa_tf.download.dedup import FingerprintIndex, fingerprint
from hpa_tf.download.fetch import FetchError, RetryPolicy, fetch
from hpa_tf.io import read_image, read_label_table, scan_image_ids, to_uint16
from hpa_tf.io.images import CHANNELS, decode_channel
from hpa_tf.io.png import encode_png
from hpa_tf.lock import FolderLock

TEMPLATES = {"jpg": "{image}_{color}.jpg", "tif": "{image}_{color}.tif.gz"}
MIN_SIDE = 64  # smaller "images" are error pages or thumbnails


@dataclass
class DownloadConfig:
    """The settings of one download (the CLI's flags)."""

    table: str
    out: str
    labels: Sequence[int] = ()  # keep rows with any of these 2021 classes; empty = all
    cell_lines: Sequence[str] = ()
    include_in_trainset: bool = False
    dedup_against: str | None = None
    source: str = "jpg"  # jpg | tif
    url_template: str | None = None  # default from source; fields {image} and {color}
    size: int = 0  # 0 = keep the served size
    keep_tif: bool = False
    workers: int = 16
    limit: int = 0
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def template(self) -> str:
        return self.url_template or TEMPLATES[self.source]


def select_rows(table: pd.DataFrame, cfg: DownloadConfig) -> pd.DataFrame:
    """The rows ``cfg`` asks for, in table order."""
    keep = np.ones(len(table), bool)
    if cfg.labels:
        wanted = set(cfg.labels)
        keep &= np.array([bool(wanted & set(v)) for v in table["labels"]])
    if cfg.cell_lines:
        if "Cellline" not in table:
            raise ValueError(f"{cfg.table}: no Cellline column to filter --cell-lines by")
        keep &= table["Cellline"].isin(list(cfg.cell_lines)).to_numpy()
    if not cfg.include_in_trainset and "in_trainset" in table:
        keep &= ~table["in_trainset"].astype(str).str.strip().str.lower().isin(["true", "1", "yes"]).to_numpy()
    out = table[keep]
    return out.head(cfg.limit) if cfg.limit else out


def _state_path(out: str, image_id: str) -> str:
    return fs.join(out, "state", f"{image_id}.json")


def _check(path: str):
    def check(body: bytes) -> None:
        plane = decode_channel(body, path)  # raises on empty, truncated or undecodable files
        if min(plane.shape) < MIN_SIDE:
            raise ValueError(f"{path}: {plane.shape[1]}x{plane.shape[0]} px is too small for a field image")

    return check


class _Downloader:
    def __init__(self, cfg: DownloadConfig, train_index: FingerprintIndex):
        self.cfg, self.train_index = cfg, train_index
        self.seen = FingerprintIndex()
        self.lock = threading.Lock()
        self.images_dir = fs.join(cfg.out, "train")

    def remember(self, image_id: str, values: list[float]) -> None:
        self.seen.add(image_id, np.asarray(values, np.float32))

    def one(self, row: dict) -> dict:
        """Fetch, check, de-duplicate and write one image; returns its state."""
        image_id, base = row["ID"], str(row["Image"]).rstrip("/")
        state = {"ID": image_id, "status": "error", "detail": "", "attempts": 0}
        bodies, planes = {}, {}
        try:
            for color in CHANNELS:
                url = self.cfg.template.format(image=base, color=color)
                bodies[color], tries = fetch(url, self.cfg.policy, _check(url))
                state["attempts"] += tries
                planes[color] = decode_channel(bodies[color], url)
        except (FetchError, OSError, ValueError) as err:
            state["detail"] = str(err)
            return state
        shapes = {c: p.shape for c, p in planes.items()}
        if len(set(shapes.values())) > 1:
            state["detail"] = "channels differ in size: " + ", ".join(f"{c} {s[1]}x{s[0]}" for c, s in shapes.items())
            return state
        h = fingerprint(np.stack([planes[c] for c in CHANNELS], axis=-1))
        state["fingerprint"] = [round(float(v), 5) for v in h]
        twin = self.train_index.find(h)
        with self.lock:
            twin_ext = None if twin else self.seen.find(h)
            if twin is None and twin_ext is None:
                self.seen.add(image_id, h)
        if twin or twin_ext:
            state.update(status="duplicate", detail=f"training image {twin}" if twin else f"downloaded image {twin_ext}")
            return state
        for color in CHANNELS:
            self._write(image_id, color, bodies[color], planes[color])
        state["status"] = "ok"
        return state

    def _write(self, image_id: str, color: str, body: bytes, plane: np.ndarray) -> None:
        if self.cfg.keep_tif and self.cfg.source == "tif":
            import gzip

            fs.write_bytes(fs.join(self.images_dir, f"{image_id}_{color}.tif"), gzip.decompress(body))
            return
        if plane.dtype not in (np.uint8, np.uint16):  # 8- and 16-bit files keep their precision
            plane = to_uint16(plane)
        if self.cfg.size and max(plane.shape) != self.cfg.size:
            h, w = plane.shape
            scale = self.cfg.size / max(h, w)
            plane = cv2.resize(plane, (max(round(w * scale), 1), max(round(h * scale), 1)), interpolation=cv2.INTER_AREA)
        fs.write_bytes(fs.join(self.images_dir, f"{image_id}_{color}.png"), encode_png(plane))


def train_fingerprints(train_dir: str, cache: str, workers: int) -> FingerprintIndex:
    """Fingerprints of every image of ``train_dir``, cached in ``cache`` (a rerun reads only new images)."""
    index, known = FingerprintIndex(), {}
    if fs.exists(cache):
        with np.load(_io.BytesIO(fs.read_bytes(cache))) as z:
            known = dict(zip(z["ids"].tolist(), z["fingerprints"]))
    ids = scan_image_ids(train_dir)
    todo = [i for i in ids if i not in known]

    def one(image_id: str) -> tuple[str, np.ndarray | None]:
        try:
            return image_id, fingerprint(read_image(train_dir, image_id))
        except OSError:
            return image_id, None  # an unreadable training image cannot be matched anyway

    with ThreadPoolExecutor(max(workers, 1)) as pool:
        for image_id, h in tqdm(pool.map(one, todo), total=len(todo), desc="fingerprinting training images", unit="img"):
            if h is not None:
                known[image_id] = h
    if todo:
        buf = _io.BytesIO()
        names = sorted(known)
        np.savez(buf, ids=np.array(names),
                 fingerprints=np.stack([known[i] for i in names]) if names else np.zeros((0, 512), np.float32))
        fs.write_bytes(cache, buf.getvalue())
    for image_id in ids:
        if image_id in known:
            index.add(image_id, known[image_id])
    return index


def download(cfg: DownloadConfig) -> dict:
    """Run a download; returns the counts ``{"ok", "duplicate", "error", "skipped_done"}``."""
    if cfg.source not in TEMPLATES:
        raise ValueError(f"--source must be one of {', '.join(TEMPLATES)}, not {cfg.source!r}")
    if cfg.keep_tif and cfg.source != "tif":
        raise ValueError("--keep-tif needs --source tif (the JPEG images are 8-bit)")
    if cfg.size < 0 or 0 < cfg.size < MIN_SIDE:
        raise ValueError(f"--size {cfg.size}: give 0 (keep the served size) or a side of at least {MIN_SIDE} px")
    if cfg.limit < 0:
        raise ValueError(f"--limit {cfg.limit}: give 0 (all images) or a positive number")
    table = read_label_table(cfg.table)
    if table.attrs.get("label_report"):
        print(table.attrs["label_report"])
    if "Image" not in table:
        raise ValueError(f"{cfg.table}: no Image column (expected the kaggle_2021.tsv layout: Image, Label_idx, ...)")
    rows = select_rows(table, cfg)
    require_writable(cfg.out, "--out")
    with FolderLock(cfg.out, "python -m hpa_tf.download"):
        return _download(cfg, rows)


SETTINGS = "download.json"


def _check_settings(cfg: DownloadConfig) -> None:
    """A folder holds images of one size, source and bit depth: a rerun with other settings is
    refused (the earlier images would stay as they are: a mixed folder)."""
    path = fs.join(cfg.out, SETTINGS)
    now = {"size": cfg.size, "source": cfg.source, "keep_tif": cfg.keep_tif}
    if fs.exists(path):
        before = json.loads(fs.read_text(path))
        if before != now:
            changed = ", ".join(f"--{k.replace('_', '-')} {before.get(k)} (now {v})" for k, v in now.items()
                                if before.get(k) != v)
            raise ValueError(f"{cfg.out} holds images downloaded with {changed}: rerun with the same settings, "
                             "or give another --out (a folder of mixed sizes would train on mixed scales)")
    elif fs.exists(fs.join(cfg.out, "state")) and fs.listdir(fs.join(cfg.out, "state")):
        raise ValueError(f"{cfg.out} holds a download of unknown settings (no {SETTINGS}): give another --out")
    fs.write_text(path, json.dumps(now))


def _download(cfg: DownloadConfig, rows: pd.DataFrame) -> dict:
    _check_settings(cfg)
    fs.makedirs(fs.join(cfg.out, "train"))
    fs.makedirs(fs.join(cfg.out, "state"))
    train_index = train_fingerprints(cfg.dedup_against, fs.join(cfg.out, "train_fingerprints.npz"), cfg.workers) \
        if cfg.dedup_against else FingerprintIndex()
    worker = _Downloader(cfg, train_index)
    states: dict[str, dict] = {}
    todo = []
    for row in rows.to_dict("records"):
        path = _state_path(cfg.out, row["ID"])
        old = json.loads(fs.read_text(path)) if fs.exists(path) else None
        if old and old["status"] in ("ok", "duplicate"):
            states[row["ID"]] = old
            if old["status"] == "ok":
                worker.remember(row["ID"], old["fingerprint"])
        else:
            todo.append(row)
    skipped = len(states)
    if skipped:
        print(f"{skipped} of {len(rows)} images already done in {cfg.out}")
    with ThreadPoolExecutor(max(cfg.workers, 1)) as pool:
        bar = tqdm(total=len(todo), desc="downloading", unit="img")
        for state in pool.map(worker.one, todo):
            if state["status"] != "error":
                fs.write_text(_state_path(cfg.out, state["ID"]), json.dumps(state))
            states[state["ID"]] = state
            bar.update(1)
            bar.set_postfix(errors=sum(s["status"] == "error" for s in states.values()), refresh=False)
        bar.close()
    return _write_tables(cfg, rows, states, skipped)


def _write_tables(cfg: DownloadConfig, rows: pd.DataFrame, states: dict[str, dict], skipped: int) -> dict:
    ok = [i for i in rows["ID"] if states.get(i, {}).get("status") == "ok"]
    keep = [c for c in ("Cellline", "in_trainset", "Image") if c in rows]
    table = rows.set_index("ID").loc[ok, ["Label", *keep]].reset_index()
    fs.write_text(fs.join(cfg.out, "train.csv"), table.to_csv(index=False))
    by_status = {s: [v for v in states.values() if v["status"] == s] for s in ("error", "duplicate")}
    fs.write_text(fs.join(cfg.out, "errors.csv"),
                  pd.DataFrame([{"ID": s["ID"], "error": s["detail"]} for s in by_status["error"]],
                               columns=["ID", "error"]).to_csv(index=False))
    fs.write_text(fs.join(cfg.out, "duplicates.csv"),
                  pd.DataFrame([{"ID": s["ID"], "duplicate_of": s["detail"]} for s in by_status["duplicate"]],
                               columns=["ID", "duplicate_of"]).to_csv(index=False))
    counts = {"ok": len(ok), "duplicate": len(by_status["duplicate"]), "error": len(by_status["error"]),
              "skipped_done": skipped}
    print(f"{cfg.out}: {counts['ok']} images in train/ and train.csv, {counts['duplicate']} duplicates "
          f"(duplicates.csv), {counts['error']} failed (errors.csv; a rerun retries them)")
    if counts["error"]:
        print(f"error: {counts['error']} of {len(rows)} images failed to download; see "
              f"{fs.join(cfg.out, 'errors.csv')} and rerun the same command to retry them", file=sys.stderr)
    return counts
