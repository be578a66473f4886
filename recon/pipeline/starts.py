"""Where a mode's latents start (``project.<mode>.init``): ``w_avg``, one ``latents.npz`` for every
face, or another mode's result for the same face; and the checks a starting latent passes before
any model is loaded."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from recon.config import ProjectorConfig, params_key
from recon.errors import MissingInputError, ParamsError

MAX_INIT_BYTES = 256 << 20


def init_path(cfg: ProjectorConfig, face_name: str, out_dir) -> Optional[Path]:
    """Where a face's starting latent is read from (None: ``w_avg``)."""
    if cfg.init == "w_avg":
        return None
    if cfg.init_mode:
        return Path(out_dir).parent / cfg.init_mode / face_name / "latents.npz"
    return Path(cfg.init)


def require_init(path: Path, mode: str = "<mode>") -> None:
    """Refuse a starting latent that is not there, naming the file, the stage to run and the key."""
    if not path.is_file():
        hint = (f" (run `dvc repro project@{path.parent.parent.name}` first)" if path.name == "latents.npz"
                and path.parent.parent.parent.name == "projected" else "")
        raise MissingInputError(f"{path}: starting latents not found{hint} ({params_key(f'project.{mode}.init')})")


MAX_LATENT_ABS = 1e3      # a StyleGAN2 w stays within about +-20; larger is not a latent of this model


def _npz_member_header(z, member: str):
    """``(shape, fortran_order, dtype)`` from an ``.npy`` member's header, read before its data
    (a header may declare any size; nothing is allocated from it unchecked)."""
    with z.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy version {version}")


def read_init(path: Path, order: Sequence[str], shapes: dict, mode: str = "<mode>") -> torch.Tensor:
    """One target's starting latent from a ``latents.npz``: the first of the arrays ``order``
    names (a method's ``init_keys``, most detailed first) that the file holds: W ``[w_dim]``, W+
    ``[num_ws, w_dim]`` (``wp`` or ``ws``) or W++ ``[num_ws, K, w_dim]``; ``shapes``:
    :func:`recon.model.networks.latent_shapes` of the generator. A W+ whose rows are all equal is
    a W. Refused, naming the file and ``project.<mode>.init``: a file that is not a readable npz,
    an array that is not a float array of exactly the generator's shape (checked from its header
    before any data is read), values that are not finite or beyond +-:data:`MAX_LATENT_ABS`."""
    key = params_key(f"project.{mode}.init")
    require_init(path, mode)
    want = dict(shapes, ws=shapes["wp"])
    try:
        with zipfile.ZipFile(path) as z:
            if sum(i.file_size for i in z.infolist()) > MAX_INIT_BYTES:
                raise ParamsError(f"{path}: more than {MAX_INIT_BYTES >> 20} MB of arrays; not a latents file ({key})")
            members = {m[:-4]: m for m in z.namelist() if m.endswith(".npy")}
            name = next((k for k in order if k in members), None)
            if name is None:
                raise ParamsError(f"{path}: holds none of {', '.join(order)} ({key})")
            shape, fortran, dtype = _npz_member_header(z, members[name])
            if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8) or list(shape) != want[name]:
                raise ParamsError(f"{path}: {name} must be a float array of shape {want[name]} for this generator, "
                                  f"got {dtype} {list(shape)} ({key})")
            with z.open(members[name]) as f:
                x = np.lib.format.read_array(f, allow_pickle=False)
    except ParamsError:
        raise
    except Exception as exc:         # any way a file can fail to parse (numpy raises SyntaxError, TokenError, ...)
        raise ParamsError(f"{path}: not a readable latents.npz ({type(exc).__name__}: {exc}) ({key})") from None
    latent = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not torch.isfinite(latent).all() or float(latent.abs().max()) > MAX_LATENT_ABS:
        raise ParamsError(f"{path}: {name} must be finite and within +-{MAX_LATENT_ABS:g}, got values up to "
                          f"{float(latent.abs().max()):.3g} ({key})")
    if latent.ndim == 2 and torch.equal(latent, latent[:1].expand_as(latent)):
        latent = latent[0]
    return latent


MAX_TUNING_RANK = 1024       # a start's factors add the ranks of every tuned result it was refined from
DELTA_LIMIT = 1e30          # |a| * |b| * rank beyond this overflows float32 on the way to the weights


def read_tuning(path: Path, mode: str, G_config: dict) -> Optional[dict]:
    """The tuning a starting latent was found with (``tune/<layer>.a`` ``[O, r]`` and ``.b``
    ``[r, I*k*k]`` arrays of its ``latents.npz``, :mod:`recon.restore.tune`), or None when it
    holds none. Checked before any model is loaded against the generator of ``G_config``: every
    key a factor of one of its layers, both factors of every layer, their shapes and ranks, finite
    and within float32 (their product too); refused naming the file, the array and the key."""
    from recon.model.networks import modulated_shapes
    from recon.restore.tune import FACTOR_PREFIX, factors_from_latents

    key = params_key(f"project.{mode}.init")
    shapes = modulated_shapes(G_config)

    def refuse(what: str):
        return ParamsError(f"{path}: {what} ({key})")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as z:
            members = {m[:-4]: m for m in z.namelist() if m.endswith(".npy") and m.startswith(FACTOR_PREFIX)}
            for name, member in sorted(members.items()):
                layer, dot, which = name[len(FACTOR_PREFIX):].rpartition(".")
                if not dot or which not in ("a", "b"):
                    raise refuse(f"{name}: not a tuning factor (they are {FACTOR_PREFIX}<layer>.a and .b)")
                if layer not in shapes:
                    raise refuse(f"{name}: this generator has no layer {layer!r} (its layers: "
                                 f"{', '.join(list(shapes)[:4])}, ...)")
                shape, _, dtype = _npz_member_header(z, member)
                rows, cols = shapes[layer]
                if dtype.kind != "f" or len(shape) != 2 or not 1 <= (shape[1] if which == "a" else shape[0]) \
                        <= MAX_TUNING_RANK or shape[0 if which == "a" else 1] != (rows if which == "a" else cols):
                    want = f"[{rows}, rank]" if which == "a" else f"[rank, {cols}]"
                    raise refuse(f"{name}: must be a float array of shape {want} for this generator's layer, "
                                 f"got {dtype} {list(shape)}")
                with z.open(member) as f:
                    x = np.lib.format.read_array(f, allow_pickle=False).astype(np.float64)
                if not np.isfinite(x).all() or np.abs(x).max() > np.finfo(np.float32).max:
                    raise refuse(f"{name}: must be finite and within float32's range, got values up to "
                                 f"{np.abs(x).max():.3g}")
                arrays[name] = x
    except ParamsError:
        raise
    except Exception as exc:
        raise ParamsError(f"{path}: not a readable latents.npz ({type(exc).__name__}: {exc}) ({key})") from None
    if not arrays:
        return None
    layers = {n[len(FACTOR_PREFIX):].rpartition(".")[0] for n in arrays}
    for layer in shapes:
        a, b = arrays.get(f"{FACTOR_PREFIX}{layer}.a"), arrays.get(f"{FACTOR_PREFIX}{layer}.b")
        if a is None or b is None:
            missing = f"{FACTOR_PREFIX}{layer}.{'a' if a is None else 'b'}"
            raise refuse(f"{missing}: missing ({len(layers)} of the generator's {len(shapes)} layers have "
                         "factors; a tuned start has both factors of every layer)")
        if a.shape[1] != b.shape[0]:
            raise refuse(f"{FACTOR_PREFIX}{layer}.a and .b: their ranks differ ({a.shape[1]} and {b.shape[0]})")
        if np.abs(a).max() * np.abs(b).max() * a.shape[1] > DELTA_LIMIT:
            raise refuse(f"{FACTOR_PREFIX}{layer}.a and .b: their product overflows float32")
    return factors_from_latents({k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()})
