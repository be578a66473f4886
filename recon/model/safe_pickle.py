"""Read NVIDIA's network pickles without executing anything from the file.

An official ``.pkl`` rebuilds each network with ``torch_utils.persistence._reconstruct_persistent_obj``,
which imports the Python source embedded in the file: a plain ``pickle.load`` runs that code. Here a
restricted unpickler resolves only an allow-list of globals, each to a harmless function of ours:
persistent objects become :class:`PersistentObject` records (their ``module_src`` is kept as text
and never imported), tensors are rebuilt from raw bytes, and the nested legacy ``torch.save`` stream
inside every storage blob is parsed with the same care. Anything else is refused before it runs.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from recon.errors import CheckpointError


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (nothing from it was executed)."""


@dataclass
class PersistentObject:
    """One pickled network module, as data: its class name, source text and ``__dict__`` state."""
    class_name: str
    module_src: str
    state: Dict[str, Any]
    version: Any = None
    type: str = "class"
    extra: Dict[str, Any] = field(default_factory=dict)

    def get(self, key, default=None):
        return self.state.get(key, default)

    @property
    def modules(self) -> Dict[str, "PersistentObject"]:
        return dict(self.state.get("_modules") or {})


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or "state" not in meta or "class_name" not in meta:
        raise CheckpointError("a persistent object without the expected meta fields")
    return PersistentObject(class_name=str(meta["class_name"]), module_src=str(meta.get("module_src", "")),
                            state=meta["state"] if isinstance(meta["state"], dict) else {},
                            version=meta.get("version"), type=str(meta.get("type", "class")),
                            extra={k: v for k, v in meta.items()
                                   if k not in ("class_name", "module_src", "state", "version", "type")})


_NUMERIC_KINDS = set("biufc")


def _numpy_dtype(spec, align=False, copy=True):
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in _NUMERIC_KINDS:
        raise UnsafePickleError(f"numpy.dtype({spec!r}) is not a plain numeric dtype")
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or not isinstance(data, bytes):
        raise UnsafePickleError("numpy scalar of a non-numeric dtype or without raw bytes")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, torch.Tensor) or storage.ndim != 1:
        raise CheckpointError("tensor rebuilt from something that is not a storage")
    try:
        size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(storage_offset)
    except (TypeError, ValueError):
        raise CheckpointError("tensor size, stride or offset is not a list of integers") from None
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise CheckpointError(f"tensor of size {size}, stride {stride}, offset {offset} is malformed")
    numel = math.prod(size)
    # The copy below allocates numel elements: a tensor may not claim more elements than its
    # storage holds (zero or overlapping strides would let a 400-byte file ask for gigabytes).
    if numel > storage.numel() - offset:
        raise CheckpointError(f"tensor of size {size} claims {numel} elements from a storage of "
                              f"{storage.numel()} (offset {offset})")
    if numel and offset + sum((n - 1) * st for n, st in zip(size, stride)) >= storage.numel():
        raise CheckpointError(f"tensor of size {size} and stride {stride} runs past its storage")
    return torch.as_strided(storage, size, stride, offset).clone()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("parameter rebuilt from something that is not a tensor")
    return data


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler (not the C one, so that BUILD can be checked) with an allow-list.

    BUILD may only fill a container instance made in this file (a dict, EasyDict, OrderedDict)
    with plain state: never a class or a function (which would let a file rewrite recon's own
    classes for the rest of the process), never slot state, never dunder attributes.
    """
    allowed: Dict[tuple, Any] = {}
    buildable: tuple = ()
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        target = self.allowed.get((module, name))
        if target is None:
            raise UnsafePickleError(f"refused global {module}.{name}: not in the allow-list of network pickles")
        return target

    def persistent_load(self, pid):
        raise UnsafePickleError(f"unexpected persistent id {pid!r}")

    def _checked_build(self):
        state, inst = self.stack[-1], self.stack[-2]  # type: ignore[attr-defined]   # pickle's pure-Python unpickler
        if isinstance(inst, type) or not isinstance(inst, self.buildable):
            what = "a class" if isinstance(inst, type) else type(inst).__name__
            raise UnsafePickleError(f"refused BUILD on {what}: state may only fill a container made by this file")
        if isinstance(inst, np.dtype):   # numpy's own __setstate__ checks its state tuple
            return pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
        if state is not None and not (isinstance(state, dict) and all(
                isinstance(k, str) and not k.startswith("__") for k in state)):
            raise UnsafePickleError("refused BUILD with slot state or dunder attributes")
        return pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch[pickle.BUILD[0]] = _checked_build  # type: ignore[assignment]


class _BlobUnpickler(_RestrictedUnpickler):
    """The pickles inside a legacy ``torch.save`` stream: storage types and persistent ids only."""
    allowed = {("torch", n): _StorageType(d) for n, d in _STORAGE_DTYPES.items()}

    def __init__(self, f):
        super().__init__(f)
        self.storages: Dict[str, tuple] = {}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise UnsafePickleError(f"unexpected persistent id in a storage blob: {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views are not supported in network pickles")
        self.storages[key] = (stype.dtype, int(numel))
        return ("storage", key)


class _PlainUnpickler(_RestrictedUnpickler):
    allowed = {}


def _load_from_bytes(blob):
    """Parse a legacy (non-zip) ``torch.save`` stream of one storage into a 1-D tensor."""
    if not isinstance(blob, (bytes, bytearray)):
        raise CheckpointError("storage blob is not bytes")
    f = io.BytesIO(bytes(blob))
    try:
        magic = _PlainUnpickler(f).load()
        if magic != _LEGACY_MAGIC:
            raise CheckpointError("storage blob is not a legacy torch.save stream (bad magic number)")
        protocol = _PlainUnpickler(f).load()
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(f"storage blob has unsupported torch.save protocol {protocol!r}")
        _PlainUnpickler(f).load()  # sys_info: byte order and type sizes, plain data
        up = _BlobUnpickler(f)
        root = up.load()
        keys = _PlainUnpickler(f).load()
    except (EOFError, struct.error) as exc:
        raise CheckpointError("storage blob is truncated") from exc
    if not (isinstance(root, tuple) and root[0] == "storage") or not isinstance(keys, list):
        raise CheckpointError("storage blob does not hold a single storage")
    tensors = {}
    for key in keys:
        if key not in up.storages:
            raise CheckpointError(f"storage blob lists unknown key {key!r}")
        dtype, numel = up.storages[key]
        itemsize = torch.empty([], dtype=dtype).element_size()
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError("storage blob is truncated (missing size header)")
        (count,) = struct.unpack("<q", header)
        if count != numel:
            raise CheckpointError(f"storage blob size header {count} does not match its {numel} elements")
        raw = f.read(numel * itemsize)
        if len(raw) != numel * itemsize:
            raise CheckpointError("storage blob is truncated (missing data)")
        tensors[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty([0], dtype=dtype)
    return tensors[root[1]]


class NetworkUnpickler(_RestrictedUnpickler):
    """Unpickler for official stylegan2-ada-pytorch / stylegan3 network pickles."""
    allowed = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy", "dtype"): _numpy_dtype,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
        ("builtins", "set"): set,
    }
    buildable = (dict, EasyDict, collections.OrderedDict, np.dtype)


def load_network_pickle(path) -> Any:
    """Unpickle an official network pickle into plain data and :class:`PersistentObject` records.

    Raises :class:`CheckpointError` (naming the file) for empty, truncated or unsafe files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise CheckpointError(f"{path}: file is empty")
    try:
        return NetworkUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise CheckpointError(f"{path}: unsafe pickle, nothing was executed: {exc}") from exc
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except EOFError as exc:
        raise CheckpointError(f"{path}: file is truncated (pickle ended early)") from exc
    except RecursionError:
        raise CheckpointError(f"{path}: structure nested too deeply for a network pickle") from None
    except MemoryError:
        raise CheckpointError(f"{path}: the pickle asks for more memory than this machine has") from None
    except (pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            struct.error, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable network pickle ({type(exc).__name__}: {exc})") from exc
