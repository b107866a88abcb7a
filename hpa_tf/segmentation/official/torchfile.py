"""PyTorch model files read as data: tensors by name, without PyTorch and without running the file.

``torch.save`` writes a pickle, and unpickling runs whatever callables the pickle names. This reader
unpickles with a :class:`pickle.Unpickler` whose ``find_class`` answers only:

* torch's tensor rebuild functions and storage types (the tensors' data, read as numpy arrays),
* ``collections.OrderedDict``, ``set``, ``torch.device`` (containers and an inert device name),
* the classes of the module tree (``torch.nn.*`` modules and the official networks'
  ``pytorch_zoo.*``), as inert placeholders that only hold their pickled ``__dict__``;

anything else (``os.system``, ``builtins.eval``, ...) is refused in one line naming the file and the
class, before it is called. Both serialisations are read: the zip one (torch >= 1.6:
``<archive>/data.pkl`` and ``<archive>/data/<key>``) and the legacy one of torch <= 1.5 (a magic
number, a protocol version and the system info as pickles, then the object pickle whose storages are
persistent ids (and the module classes, with their source text, as persistent ids too), the storage keys, and the raw storages, each after its element count). Paths go
through :mod:`hpa_tf.fs`, so ``gs://`` works.

A whole pickled ``nn.Module`` (as the official HPA files are) gives its ``state_dict`` entries by the
same names (``_parameters``, ``_buffers``, ``_modules`` walked in order); a saved ``state_dict`` gives
its entries.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# The module paths whose classes may appear in a module tree (as placeholders, never instantiated).
MODULE_PREFIXES = ("torch.nn.modules.", "torch.nn.parallel.", "pytorch_zoo.")
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")


class UnsafePickleError(ValueError):
    """The file's pickle asks for something other than tensors and module-tree names."""


@dataclass
class ModuleRecord:
    """An ``nn.Module`` of the file, inert: its class path and its pickled attributes."""

    cls: str
    state: dict = field(default_factory=dict)

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: the module's __dict__
        if isinstance(state, tuple):  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state.update(state or {})


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: Any
    offset: int = 0  # elements, for the legacy format's storage views


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass
class TorchFile:
    """What a PyTorch file holds: ``tensors`` (state_dict name -> numpy array, in the file's order),
    ``classes`` (module class path -> count) and ``format`` (``zip`` or ``legacy``)."""

    tensors: dict[str, np.ndarray]
    classes: dict[str, int]
    format: str


def _placeholder(path: str, counts: Counter) -> type:
    """A class standing for ``path``: building it (NEWOBJ or a call) records data, runs nothing."""

    def new(cls, *args: Any, **kwargs: Any) -> ModuleRecord:
        counts[path] += 1
        return ModuleRecord(path)

    return type(path.rsplit(".", 1)[-1], (), {"__new__": new, "__module__": "hpa_tf.placeholder"})


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: Any) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"a tensor rebuilt from {type(storage).__name__}, not from a storage of the file")
    return _TensorRef(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise UnsafePickleError(f"a parameter rebuilt from {type(data).__name__}, not from a tensor")
    return data


def _device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: Any, path: str, classes: Counter, storages: dict[str, _Storage]):
        super().__init__(f)
        self.path, self.classes, self.storages = path, classes, storages

    def find_class(self, module: str, name: str) -> Any:
        where = f"{module}.{name}"
        if module in ("collections",) and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
            return {"set": set, "frozenset": frozenset}[name]
        if module == "torch._utils" and name in _REBUILDERS:
            return _rebuild_parameter if "parameter" in name else _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "torch" and name == "device":
            return _device
        if where.startswith(MODULE_PREFIXES) and re.fullmatch(r"[A-Z]\w*", name):
            return _placeholder(where, self.classes)
        raise UnsafePickleError(f"{self.path}: refused: the pickle asks for {where}, which is neither a tensor nor a "
                                "module class (only tensors and module names are read; nothing in the file is run)")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            return pid[1]  # legacy format: a module class (a placeholder) with its source text, never run
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError(f"{self.path}: refused: unknown persistent id {str(pid)[:60]!r}")
        storage_type, key = pid[1], str(pid[2])
        if storage_type not in _STORAGE_DTYPES:
            raise UnsafePickleError(f"{self.path}: refused: storage type {storage_type!r} is not a tensor type")
        dtype = _STORAGE_DTYPES[storage_type]
        view = pid[5] if len(pid) > 5 else None
        root = self.storages.setdefault(key, _Storage(key, dtype))
        if view is not None:  # legacy storage view: (view key, offset, size) into the root storage
            return _Storage(key, dtype, int(view[1]))
        return root


def _load_pickle(f: Any, path: str, classes: Counter, storages: dict) -> Any:
    try:
        return _Unpickler(f, path, classes, storages).load()
    except UnsafePickleError as err:
        message = str(err)
        raise UnsafePickleError(message if message.startswith(path) else f"{path}: refused: {message}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, IndexError, KeyError) as err:
        raise ValueError(f"{path}: not a readable PyTorch file ({type(err).__name__}: {err})") from None


def _read_zip(data: bytes, path: str, classes: Counter) -> tuple[Any, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise ValueError(f"{path}: a zip file without <archive>/data.pkl: not a PyTorch file")
        prefix = pkl[: -len("data.pkl")]
        order = next((n for n in names if n == prefix + "byteorder"), None)
        if order is not None and z.read(order).strip() != b"little":
            raise ValueError(f"{path}: big-endian tensors are not supported")
        storages: dict[str, _Storage] = {}
        obj = _load_pickle(io.BytesIO(z.read(pkl)), path, classes, storages)
        raw = {key: z.read(f"{prefix}data/{key}") for key in storages}
    return obj, raw


def _read_legacy(data: bytes, path: str, classes: Counter) -> tuple[Any, dict[str, bytes]]:
    f = io.BytesIO(data)
    storages: dict[str, _Storage] = {}
    try:
        magic = _load_pickle(f, path, classes, storages)
    except ValueError:
        magic = None
    if magic != LEGACY_MAGIC:
        raise ValueError(f"{path}: not a PyTorch file (neither the zip nor the legacy serialisation)")
    protocol = _load_pickle(f, path, classes, storages)
    if protocol != LEGACY_PROTOCOL:
        raise ValueError(f"{path}: legacy PyTorch protocol {protocol}, expected {LEGACY_PROTOCOL}")
    sys_info = _load_pickle(f, path, classes, storages)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{path}: big-endian tensors are not supported")
    obj = _load_pickle(f, path, classes, storages)
    keys = _load_pickle(f, path, classes, storages)
    raw: dict[str, bytes] = {}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        itemsize = np.dtype(storages[str(key)].dtype).itemsize if str(key) in storages else 1
        raw[str(key)] = f.read(count * itemsize)
        if len(raw[str(key)]) != count * itemsize:
            raise ValueError(f"{path}: truncated: storage {key} has {len(raw[str(key)])} of {count * itemsize} bytes")
    return obj, raw


def _array(ref: _TensorRef, raw: dict[str, bytes], path: str) -> np.ndarray:
    storage = ref.storage
    if storage.key not in raw:
        raise ValueError(f"{path}: a tensor's storage {storage.key!r} is not in the file")
    flat = np.frombuffer(raw[storage.key], dtype=storage.dtype)
    start = storage.offset + ref.offset
    shape, stride = tuple(int(n) for n in ref.shape), tuple(int(s) for s in ref.stride)
    # Every element must lie inside the file's own storage: as_strided reads whatever memory it is told to.
    if start < 0 or len(shape) != len(stride) or any(n < 0 for n in shape) or any(s < 0 for s in stride):
        raise ValueError(f"{path}: a tensor of shape {shape}, stride {stride} at offset {start}: negative values")
    if int(np.prod(shape, dtype=np.int64)) > max(flat.size - start, 0):
        raise ValueError(f"{path}: a tensor of shape {shape} holds more elements than its storage ({flat.size})")
    if not shape:
        if start >= flat.size:
            raise ValueError(f"{path}: a scalar at offset {start} lies past its storage ({flat.size} elements)")
        return np.array(flat[start])
    itemsize = flat.dtype.itemsize
    end = start + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    if 0 not in shape and end > flat.size:
        raise ValueError(f"{path}: a tensor of shape {shape} reaches past its storage ({flat.size} elements)")
    view = np.lib.stride_tricks.as_strided(flat[start:], shape, tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _walk(obj: Any, prefix: str, out: dict[str, _TensorRef], seen: frozenset = frozenset()) -> None:
    if id(obj) in seen:
        raise ValueError(f"the module tree holds a cycle at {prefix.rstrip('.') or 'its root'}")
    seen = seen | {id(obj)}
    if isinstance(obj, _TensorRef):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, ModuleRecord):
        state = obj.state
        skip = set(state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if value is not None and name not in skip:
                    out[prefix + name] = value
        for name, child in (state.get("_modules") or {}).items():
            if child is not None:
                _walk(child, f"{prefix}{name}.", out, seen)
    elif isinstance(obj, dict):
        if any(isinstance(v, _TensorRef) for v in obj.values()):  # a state_dict
            for name, value in obj.items():
                if isinstance(value, _TensorRef):
                    out[prefix + str(name)] = value
        else:  # a checkpoint holding a module or a state_dict
            for key in ("state_dict", "model", "module", "net"):
                if key in obj:
                    _walk(obj[key], prefix, out)
                    return


def read_torch_bytes(data: bytes, path: str = "<bytes>") -> TorchFile:
    """:func:`read_torch_file` on the file's bytes (``path`` only names it in errors)."""
    classes: Counter = Counter()
    try:
        if data[:4] == b"PK\x03\x04":
            obj, raw, fmt = *_read_zip(data, path, classes), "zip"
        else:
            obj, raw, fmt = *_read_legacy(data, path, classes), "legacy"
        refs: dict[str, _TensorRef] = {}
        _walk(obj, "", refs)
        if not refs:
            raise ValueError(f"{path}: no tensors found (expected a pickled nn.Module or a state_dict)")
        tensors = {name: _array(ref, raw, path) for name, ref in refs.items()}
    except UnsafePickleError:
        raise
    except Exception as err:  # noqa: BLE001 - any malformed content: one line naming the file
        message = str(err)
        raise ValueError(message if message.startswith(path) else
                         f"{path}: not a readable PyTorch file ({type(err).__name__}: {message})") from err
    return TorchFile(tensors, dict(classes), fmt)


def read_torch_file(path: str) -> TorchFile:
    """The tensors of a PyTorch file (``torch.save`` of a module or a state_dict, zip or legacy), by
    their ``state_dict`` names, as numpy arrays; nothing in the file is run. Local or ``gs://`` path.

    Errors: ``FileNotFoundError``; :class:`UnsafePickleError` (a ``ValueError``) naming the file and
    the refused class; ``ValueError`` for a file that is not a PyTorch file.
    """
    from hpa_tf import fs

    return read_torch_bytes(fs.read_bytes(path), path)
