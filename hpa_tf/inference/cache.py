"""The per-image cache of a prediction run: each image's cells, masks and every model's scores.

A killed run resumes from it, and a different ``--combine`` rule or weights reuse it without
running a model again. ``key.json`` records what produced it (models, segmenter, TTA, cell view);
a run with other settings refuses to mix its scores in. An image scored under a time budget's
reduced plan records what was dropped (``dropped``); a model it dropped has no scores (None).
"""

from __future__ import annotations

import io
import json

import numpy as np

from hpa_tf import fs
from hpa_tf.inference.budget import LEDGER
from hpa_tf.inference.combine import ModelScores
from hpa_tf.inference.plan import model_piece

KEY = "key.json"
# width, height, cell ids, masks, scores (None: a model the image's time-budget plan dropped)
Entry = tuple[int, int, np.ndarray, list[str], list[ModelScores | None]]


class CacheMismatchError(ValueError):
    """A cache folder written by a run with other settings."""


def identity(key: dict) -> dict:
    """What decides whether two runs' scores may mix: a model is its content (``sha256``), not the
    path it was given by (a copy, a link or another working directory is the same model).

    >>> identity({"models": [{"path": "a.keras", "sha256": "f00"}], "tta": "none"})
    {'models': [{'sha256': 'f00'}], 'tta': 'none'}
    """
    return {**key, "models": [{k: v for k, v in m.items() if k != "path"} for m in key["models"]]}


def check_key(cache_dir: str, key: dict, overwrite: bool = False) -> None:
    """Write ``key`` to a new cache; for an existing one, insist it matches (or wipe it on ``overwrite``).
    A folder that holds scores but no readable ``key.json`` (deleted or edited by hand) cannot say
    which run made them: refused like another run's. ``overwrite`` removes the files a cache holds
    (``*.npz``, ``key.json``, the time budget's ledger), nothing else of the folder."""
    path = fs.join(cache_dir, KEY)
    # only what a cache writes: --cache may name a folder that holds other files too
    names = [n for n in fs.listdir(cache_dir) if _is_cache_file(n)] if fs.isdir(cache_dir) else []
    if fs.exists(path) or any(n.endswith(".npz") for n in names):
        old = _read_key(path)
        if old == key:
            return
        # the same models by other paths keep the scores (the key is rewritten with this run's paths)
        if old is None or identity(old) != identity(key):
            if not overwrite:
                raise CacheMismatchError(f"{cache_dir} {_mismatch(old, key)}; pass --overwrite to discard them, or "
                                         "--cache a new folder")
            for name in names:
                if name == KEY and fs.isdir(path):  # a key.json made a folder by hand
                    fs.rmdir(path)
                else:
                    fs.remove(fs.join(cache_dir, name))
    fs.write_text(path, json.dumps(key, indent=2, sort_keys=True))


def _mismatch(old: dict | None, key: dict) -> str:
    """What the cache holds instead of ``key``'s scores, for the refusal."""
    if old is None:
        return f"holds scores but no readable {KEY} saying which models, images and settings made them"
    old, new = identity(old), identity(key)
    diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
    return f"holds scores of another run (differs in {sorted(diff)}: {diff})"


def _is_cache_file(name: str) -> bool:
    """A file this module or the time budget's ledger writes (not the lock of the run wiping it)."""
    base = name.split(".tmp-")[0]  # an atomic write a kill interrupted
    return base in (KEY, LEDGER) or base.endswith(".npz")


def _read_key(path: str) -> dict | None:
    """The cache's key, or None where there is none or it cannot be read (edited, truncated, not
    the shape this module writes)."""
    if not fs.exists(path) or fs.isdir(path):
        return None
    try:
        key = json.loads(fs.read_text(path))
    except ValueError:
        return None
    ok = isinstance(key, dict) and isinstance(key.get("models"), list) and all(isinstance(m, dict) for m in key["models"])
    return key if ok else None


def _path(cache_dir: str, image_id: str) -> str:
    return fs.join(cache_dir, f"{image_id}.npz")


def is_cached(cache_dir: str, image_id: str) -> bool:
    return fs.exists(_path(cache_dir, image_id))


def save(cache_dir: str, image_id: str, width: int, height: int, cell_ids: np.ndarray, masks: list[str],
         scores: list[ModelScores | None], dropped: tuple[str, ...] = ()) -> None:
    """Store one image atomically (a killed run never leaves half an entry); ``dropped``: the pieces
    of work its time-budget plan left out (a model dropped there has None scores)."""
    arrays = {"size": np.array([width, height]), "cell_ids": np.asarray(cell_ids, np.int64),
              "masks": np.array(masks, dtype=str)}
    if dropped:
        arrays["dropped"] = np.array(dropped, dtype=str)
    for k, s in enumerate(scores):
        if s is None:
            continue
        arrays[f"image_{k}"] = s.image
        if s.cells is not None:
            arrays[f"cells_{k}"] = s.cells
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    fs.write_bytes(_path(cache_dir, image_id), buf.getvalue())


class CacheEntryError(ValueError):
    """A cached image that cannot be read; it has been removed, so the image is scored again."""


def load(cache_dir: str, image_id: str, n_models: int) -> Entry:
    """``(width, height, cell_ids, masks, scores)`` of a cached image. A file that cannot be read
    (truncated, corrupt, from another run) is removed and raises :class:`CacheEntryError` naming it."""
    return load_with_dropped(cache_dir, image_id, n_models)[0]


def load_with_dropped(cache_dir: str, image_id: str, n_models: int) -> tuple[Entry, tuple[str, ...]]:
    """:func:`load`, and the pieces of work the image's time-budget plan dropped (``()``: none)."""
    path = _path(cache_dir, image_id)
    try:
        with np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False) as z:
            width, height = (int(v) for v in z["size"])
            dropped = tuple(str(d) for d in z["dropped"]) if "dropped" in z else ()
            scores = [None if model_piece(k) in dropped else
                      ModelScores(z[f"image_{k}"], z[f"cells_{k}"] if f"cells_{k}" in z else None)
                      for k in range(n_models)]
            return (width, height, z["cell_ids"], [str(m) for m in z["masks"]], scores), dropped
    except Exception as err:  # noqa: BLE001 - BadZipFile, EOFError, KeyError, ValueError...: all the same fix
        fs.remove(path)
        raise CacheEntryError(f"cache file {path} cannot be read ({type(err).__name__}: {err}); "
                              "removed, the image is scored again") from err
