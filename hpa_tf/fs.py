"""File access through ``tf.io.gfile``, so that every path may be local, ``gs://`` or ``ram://``.

TensorFlow is imported on first use: importing it costs seconds, and the label and metric
code paths that never touch a file should not pay for it.
"""

from __future__ import annotations

import functools
import posixpath
import uuid
from types import ModuleType


@functools.cache
def _tf() -> ModuleType:
    try:
        import tensorflow as tf
    except ImportError as err:  # pragma: no cover - depends on the user's install
        raise ImportError(
            "hpa-tf needs TensorFlow for file access. Install one build: "
            "`pip install \"hpa-tf[cpu]\"` (CPU, no CUDA wheels), `pip install \"hpa-tf[gpu]\"`, "
            "or keep the TensorFlow of your TPU/Kaggle/Colab runtime."
        ) from err
    return tf


def join(*parts: str) -> str:
    """Join path parts with ``/`` (valid for local paths and URLs alike).

    >>> join("gs://bucket/data", "train", "a_red.png")
    'gs://bucket/data/train/a_red.png'
    """
    return posixpath.join(*parts)


def exists(path: str) -> bool:
    """True if ``path`` exists. ``exists("gs://b/x.png")``"""
    return bool(_tf().io.gfile.exists(path))


def makedirs(path: str) -> None:
    """Create ``path`` and its parents; no error when it exists. ``makedirs("out/train")``"""
    _tf().io.gfile.makedirs(path)


def isdir(path: str) -> bool:
    """True if ``path`` is a directory. ``isdir("data/train")``"""
    return bool(_tf().io.gfile.isdir(path))


def listdir(path: str) -> list[str]:
    """Names (not paths) in a directory. ``listdir("data/train")``"""
    return sorted(_tf().io.gfile.listdir(path))


def glob(pattern: str) -> list[str]:
    """Sorted paths matching a glob pattern. ``glob("data/train/*_red.png")``"""
    return sorted(_tf().io.gfile.glob(pattern))


def size(path: str) -> int:
    """Size of a file in bytes. ``size("a_red.png")``"""
    return int(_tf().io.gfile.stat(path).length)


def read_bytes(path: str) -> bytes:
    """The whole file as bytes; a missing file is a ``FileNotFoundError`` naming it. ``read_bytes("a_red.png")``"""
    tf = _tf()
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except tf.errors.PermissionDeniedError:
        raise PermissionError(f"{path}: permission denied") from None


def open_read(path: str):
    """A binary file object for reading (``seek`` works), as a context manager. ``with open_read(p) as f: f.read(8)``"""
    return _tf().io.gfile.GFile(path, "rb")


def absolute(path: str) -> str:
    """A local path made absolute from the caller's working directory; URLs as they are.

    >>> absolute("gs://b/x"), absolute("/data/x")
    ('gs://b/x', '/data/x')
    """
    import os

    return path if "://" in path else os.path.abspath(path)


def canonical(path: str) -> str:
    """A local path made absolute with its links resolved (one folder reached by two paths gives one
    name); URLs as they are. ``canonical("data/test")``"""
    import os

    return path if "://" in path else os.path.realpath(path)


def read_text(path: str) -> str:
    """The whole file as text (UTF-8; a byte-order mark, as Excel writes, is dropped). ``read_text("train.csv")``"""
    return read_bytes(path).decode("utf-8-sig")


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` atomically: to a temporary name, then renamed over ``path``.

    A killed run never leaves a half-written file under the final name.

    >>> write_bytes("out/x.bin", b"...")  # doctest: +SKIP
    """
    tf = _tf()
    parent = posixpath.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        try:  # a full disk or a kill leaves no half file behind, and the old one intact
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        raise


def rename(src: str, dst: str) -> None:
    """Rename (move) a file, replacing ``dst``. ``rename("a.npz", "a.npz.corrupt")``"""
    _tf().io.gfile.rename(src, dst, overwrite=True)


def write_text(path: str, text: str) -> None:
    """Write text atomically (see :func:`write_bytes`). ``write_text("out/a.csv", "ID\\n")``"""
    write_bytes(path, text.encode("utf-8"))


def rmdir(path: str) -> None:
    """Delete a directory (call it on empty ones). ``rmdir("out/backup")``"""
    _tf().io.gfile.rmtree(path)


def remove(path: str) -> None:
    """Delete a file if it exists. ``remove("out/x.tmp")``"""
    tf = _tf()
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
