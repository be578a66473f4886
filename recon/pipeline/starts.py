"""Where a mode's latents start (``project.<mode>.init``): ``w_avg``, one ``latents.npz`` for every
face, or another mode's result for the same face; and the checks a starting latent passes before
any model is loaded."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from recon.config import ProjectorConfig
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
        raise MissingInputError(f"{path}: starting latents not found{hint} (params.yaml: project.{mode}.init)")


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
    key = f"params.yaml: project.{mode}.init"
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


def read_tuning(path: Path, mode: str = "<mode>") -> Optional[dict]:
    """The tuning a starting latent was found with (``tune/<layer>.a`` and ``.b`` arrays of its
    ``latents.npz``, :mod:`recon.restore.tune`), or None when it holds none; refused, naming the
    file, when one is not a finite 2-D float array. Whether they fit the generator is checked
    when the batch starts."""
    from recon.restore.tune import FACTOR_PREFIX, factors_from_latents

    key = f"params.yaml: project.{mode}.init"
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                if name.startswith(FACTOR_PREFIX):
                    x = z[name]
                    if x.dtype.kind != "f" or x.ndim != 2 or not np.isfinite(x).all():
                        raise ParamsError(f"{path}: {name} must be a finite 2-D float array, got {x.dtype} "
                                          f"{list(x.shape)} ({key})")
                    arrays[name] = torch.from_numpy(x.astype(np.float32))
    except ParamsError:
        raise
    except Exception as exc:
        raise ParamsError(f"{path}: not a readable latents.npz ({type(exc).__name__}: {exc}) ({key})") from None
    return factors_from_latents(arrays) if arrays else None
