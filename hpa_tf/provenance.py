"""What every artifact was made from: one rule for record sets, trained models and per-cell labels.

Each artifact folder holds ``provenance.json``, written last, when the artifact is complete:

- ``kind``: ``records`` | ``model`` | ``labels``;
- ``made_from``: the content of its inputs and its effective settings, with the *fingerprints* of
  the artifacts it was made from in place of their paths (a model names its records' fingerprint,
  not their folder), so a change anywhere upstream changes every fingerprint downstream;
- ``fingerprint``: a hash of ``kind`` and ``made_from``;
- ``files``: the sha256 of each output file, so a truncated or replaced output is not "done".

A stage is skipped only when the fingerprint it would have now equals the recorded one and its files
are intact (:func:`is_current`); a stage that starts work first removes the record (:func:`forget`), so
a run killed half way is never taken for a finished one. Paths are not part of a fingerprint: a
moved data folder or run folder is still the same artifact.

Why our own small module and not a workflow library (DVC, Snakemake, luigi): the hand-offs are
already files that hpa-tf's commands own, the inputs that matter are computed (a config after
overrides, the folds held out, the fingerprints of upstream artifacts), and the record must travel
with the artifact to ``gs://`` and into a Kaggle dataset; a few dozen lines of hashing do that,
where a workflow tool would add a second description of the pipeline and a server or lock file of
its own.

    >>> digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hpa_tf import fs

FILE = "provenance.json"
KINDS = ("records", "model", "labels")
_SAMPLE = 1 << 16  # bytes read from each end of a large input file


def digest(value: Any) -> str:
    """A short sha256 of a JSON-able value, independent of key order."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
    """The sha256 of a file's whole content (models, label stores, tables: files read whole anyway)."""
    h = hashlib.sha256()
    with fs.open_read(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def quick_file_digest(path: str) -> str:
    """A digest of an input image or weight file that reads at most 128 KiB: its size and its first
    and last 64 KiB. Any change of size or of either end is seen; an edit inside a large file that
    keeps its size exactly is not (compressed images practically never do that). Used where hashing
    every byte of every training image (hundreds of GB on Kaggle) would cost more than the build.
    """
    size = fs.size(path)
    h = hashlib.sha256(str(size).encode())
    with fs.open_read(path) as f:
        h.update(f.read(_SAMPLE))
        if size > 2 * _SAMPLE:
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))
    return h.hexdigest()[:16]


@dataclass
class Provenance:
    """The record of one artifact (see the module docstring)."""

    kind: str
    made_from: dict
    fingerprint: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"provenance kind {self.kind!r} is not one of {KINDS}")
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.kind, self.made_from)


def fingerprint(kind: str, made_from: Mapping) -> str:
    """The fingerprint an artifact of ``kind`` made from ``made_from`` has."""
    return digest({"kind": kind, "made_from": made_from})


def read(folder: str) -> Provenance | None:
    """The folder's record, or None (none yet, an interrupted stage, or an unreadable file)."""
    path = fs.join(folder, FILE)
    if not fs.exists(path):
        return None
    try:
        return Provenance(**json.loads(fs.read_text(path)))
    except (ValueError, TypeError):
        return None


def write(folder: str, kind: str, made_from: dict, files: Iterable[str] = ()) -> Provenance:
    """Record ``folder`` as complete: ``made_from`` and the digest of each output file (names
    relative to ``folder``). Call it after every output is written."""
    record = Provenance(kind, made_from, files={name: file_digest(fs.join(folder, name)) for name in files})
    fs.write_text(fs.join(folder, FILE), json.dumps(asdict(record), indent=2, sort_keys=True))
    return record


def forget(folder: str) -> None:
    """Remove the folder's record before new work starts in it."""
    path = fs.join(folder, FILE)
    if fs.exists(path):
        fs.remove(path)


def damaged_files(folder: str, record: Provenance) -> list[str]:
    """The recorded output files that are missing or whose content changed."""
    bad = []
    for name, want in record.files.items():
        path = fs.join(folder, name)
        if not fs.exists(path) or file_digest(path) != want:
            bad.append(name)
    return bad


def is_current(folder: str, kind: str, made_from: dict, say: bool = True,
               normalize: Callable[[dict], dict] | None = None) -> bool:
    """Whether ``folder`` holds a complete ``kind`` artifact made from exactly ``made_from``, its
    files intact. With ``say``, why not is printed when the folder holds another one. ``normalize``
    maps a stored ``made_from`` to today's form (one written by an older hpa-tf) before comparing."""
    record = read(folder)
    if record is None:
        if say and fs.exists(folder) and fs.listdir(folder):
            print(f"{folder}: unfinished (no {FILE}); doing it again")
        return False
    what = ["kind"] if record.kind != kind else differences(kind, record.fingerprint, record.made_from, made_from,
                                                            normalize)
    if what:
        if say and what == [EDITED]:
            print(f"{folder}: its {FILE} does not match its own fingerprint (edited or damaged); redoing it")
        elif say:
            print(f"{folder}: made from other inputs ({', '.join(what)} changed); redoing it")
        return False
    bad = damaged_files(folder, record)
    if bad and say:
        print(f"{folder}: {', '.join(bad)} missing or changed since it was made; redoing it")
    return not bad


EDITED = "its record"


def differences(kind: str, recorded_fingerprint: str | None, recorded: Mapping, made_from: Mapping,
                normalize: Callable[[dict], dict] | None = None) -> list[str]:
    """Why a record (its fingerprint and ``made_from``) is not of ``made_from``: [] when it is;
    ``[EDITED]`` when its ``made_from`` does not give its fingerprint (edited by hand or damaged); else
    the keys that differ after ``normalize`` (:func:`changed`).

    >>> differences("model", fingerprint("model", {"a": 1}), {"a": 1}, {"a": 2})
    ['a']
    """
    if recorded_fingerprint != fingerprint(kind, recorded):
        return [EDITED]
    stored = normalize(dict(recorded)) if normalize else recorded
    if fingerprint(kind, stored) == fingerprint(kind, made_from):
        return []
    return changed(stored, made_from) or ["made by an older hpa-tf"]


def changed(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ between two ``made_from`` records.

    >>> changed({"config": {"epochs": 1, "lr": 2}, "records": "a"}, {"config": {"epochs": 2, "lr": 2}, "records": "a"})
    ['config.epochs']
    """
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def require(folder: str, kind: str, what: str) -> Provenance:
    """The folder's record, or a ValueError naming ``what`` it should be and how to make it."""
    record = read(folder)
    if record is None or record.kind != kind:
        raise ValueError(f"{folder}: no complete {what} here (no {FILE} of kind {kind}: unfinished, or made by an older "
                         "hpa-tf); make it again")
    return record
