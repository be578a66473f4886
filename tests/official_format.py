"""Write network pickles in NVIDIA's layout, so that tests can build their own small checkpoints.

Each ``nn.Module`` is pickled as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {type, version, module_src, class_name, state}``, tensors through torch's own reducers
(``_rebuild_tensor_v2`` over ``_load_from_bytes`` storage blobs), numpy scalars and ``EasyDict``s
as the official files have them. Nothing here is NVIDIA code: it only reproduces the file format.
"""
from __future__ import annotations

import copy
import io
import pickle
import sys
import types

import torch


def _install_fake_modules():
    """Pickle resolves globals by import; give it inert stand-ins for the official module names."""
    if "torch_utils.persistence" not in sys.modules:
        pkg = types.ModuleType("torch_utils")
        mod = types.ModuleType("torch_utils.persistence")

        def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called by the loader
            raise RuntimeError("test stand-in: must never be executed")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
        pkg.persistence = mod
        sys.modules["torch_utils"] = pkg
        sys.modules["torch_utils.persistence"] = mod
    if "dnnlib.util" not in sys.modules:
        pkg = types.ModuleType("dnnlib")
        util = types.ModuleType("dnnlib.util")

        class EasyDict(dict):
            pass

        EasyDict.__module__ = "dnnlib.util"
        EasyDict.__qualname__ = "EasyDict"
        util.EasyDict = EasyDict
        pkg.util = util
        sys.modules["dnnlib"] = pkg
        sys.modules["dnnlib.util"] = util
    return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, sys.modules["dnnlib.util"].EasyDict


def _easy(d, EasyDict):
    if isinstance(d, dict):
        return EasyDict({k: _easy(v, EasyDict) for k, v in d.items()})
    return d


class _OfficialPickler(pickle.Pickler):
    def __init__(self, f, protocol, reconstruct, EasyDict, flat_synthesis_kwargs=False):
        super().__init__(f, protocol=protocol)
        self.reconstruct = reconstruct
        self.EasyDict = EasyDict
        self.flat = flat_synthesis_kwargs

    def reducer_override(self, obj):
        if isinstance(obj, torch.nn.Module):
            state = dict(obj.__dict__)
            if hasattr(obj, "config"):
                init = copy.deepcopy(obj.config)
                if self.flat:  # the stylegan3 repository's Generator(..., **synthesis_kwargs)
                    init.update(init.pop("synthesis_kwargs"))
                state["_init_kwargs"] = _easy(init, self.EasyDict)
                state["_init_args"] = ()
            meta = dict(type="class", version=6, module_src="# source omitted",
                        class_name=type(obj).__name__, state=state)
            return self.reconstruct, (meta,)
        return NotImplemented


def dumps_official(networks: dict, protocol: int = 4, flat_synthesis_kwargs: bool = False) -> bytes:
    """Pickle ``{'G': ..., 'D': ..., 'G_ema': ..., ...}`` the way NVIDIA's training loop does."""
    reconstruct, EasyDict = _install_fake_modules()
    buf = io.BytesIO()
    _OfficialPickler(buf, protocol, reconstruct, EasyDict, flat_synthesis_kwargs).dump(networks)
    return buf.getvalue()


def write_official_pkl(path, G, protocol: int = 4, flat_synthesis_kwargs: bool = False) -> None:
    """Write a snapshot-style pickle whose ``G_ema`` is ``G`` (``G`` is a perturbed copy)."""
    G_train = copy.deepcopy(G)
    with torch.no_grad():
        for p in G_train.parameters():
            p.add_(0.01)
    data = dict(training_set_kwargs=None, G=G_train, D=None, G_ema=G, augment_pipe=None)
    with open(path, "wb") as f:
        f.write(dumps_official(data, protocol, flat_synthesis_kwargs))
