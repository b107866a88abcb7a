"""Epoch backups that survive kills and full disks: ``backup/epoch-00003.npz`` holds every model and
optimizer variable and the run's state (epoch, best epoch, history).

- Written atomically: to a temporary name, then renamed (:func:`hpa_tf.fs.write_bytes`); a kill or a
  full disk leaves the previous backups as they were. The newest ``keep`` are kept.
- Read newest first: a backup that cannot be read (truncated, corrupt) is named, set aside as
  ``*.corrupt``, and the one before it is used.
- A write that fails (no space left, no permission) is a :class:`StorageError` naming the folder.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np

from hpa_tf import fs

_NAME = re.compile(r"^epoch-(\d{5})\.npz$")
_STATE = "__state__"


class StorageError(OSError):
    """Training outputs that cannot be written; the message names the folder and the fix."""


def storage_error(folder: str, what: str, err: BaseException, size_mb: float | None = None) -> StorageError:
    """A :class:`StorageError` for a failed write of ``what`` into ``folder``."""
    text = str(err)
    full = any(s in text.lower() for s in ("no space", "file too large", "quota", "enospc", "efbig"))
    hint = ("the disk is full: free space there" + (f" (one backup is {size_mb:.0f} MB)" if size_mb else "")
            if full else "check that the folder exists and is writable")
    return StorageError(f"cannot write {what} to {folder}: {text.strip() or type(err).__name__}; "
                        f"{hint}, or set train.model_dir elsewhere")


def _paths(folder: str) -> list[tuple[int, str]]:
    if not fs.exists(folder):
        return []
    found = [(int(m.group(1)), fs.join(folder, name)) for name in fs.listdir(folder) if (m := _NAME.match(name))]
    return sorted(found)


def path_of(folder: str, epoch: int) -> str:
    """The backup of ``epoch``, counted from 0 (Keras' progress shows that epoch as ``epoch + 1``)."""
    return fs.join(folder, f"epoch-{epoch:05d}.npz")


def save(folder: str, epoch: int, arrays: dict[str, np.ndarray], state: dict, keep: int = 2) -> str:
    """Write the backup of a finished ``epoch`` (0-based) and drop all but the newest ``keep``."""
    buf = io.BytesIO()
    np.savez(buf, **{_STATE: np.array(json.dumps(state))}, **arrays)
    data = buf.getvalue()
    path = path_of(folder, epoch)
    try:
        fs.makedirs(folder)
        fs.write_bytes(path, data)
    except Exception as err:
        raise storage_error(folder, f"the backup of epoch {epoch}", err, len(data) / 1e6) from err
    for _, old in _paths(folder)[:-keep]:
        fs.remove(old)
    return path


def load_latest(folder: str, set_aside: bool = True) -> tuple[dict[str, np.ndarray], dict] | None:
    """``(arrays, state)`` of the newest readable backup, or None when there is none. An unreadable
    one is renamed ``*.corrupt`` (by one process only: ``set_aside``) and skipped."""
    for _, path in reversed(_paths(folder)):
        try:
            with np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False) as z:
                state = json.loads(str(z[_STATE]))
                arrays = {k: z[k] for k in z.files if k != _STATE}  # reading every array checks every CRC
            return arrays, state
        except Exception as err:  # noqa: BLE001 - any unreadable backup is set aside the same way
            note = f"backup {path} cannot be read ({type(err).__name__}: {err}); "
            if set_aside and fs.exists(path):
                fs.rename(path, f"{path}.corrupt")
                note += f"set aside as {path}.corrupt, "
            print(note + "resuming from the one before it")
    return None


def remove_all(folder: str) -> None:
    """Remove the epoch backups of a finished run (the ``.corrupt`` ones stay for a look)."""
    for _, path in _paths(folder):
        fs.remove(path)
    if fs.exists(folder) and not fs.listdir(folder):
        fs.rmdir(folder)
