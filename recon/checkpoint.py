"""Load generators from official pickles or the project's safetensors format; convert between them.

The project's format is one ``.safetensors`` file: the official state_dict (official names, float32)
plus the generator's constructor arguments as JSON in the header metadata (key ``recon_config``).
A bare state_dict ``.safetensors`` (no metadata) loads with an explicit JSON config, or a sidecar
``<stem>.json`` / ``config.json`` beside it, holding the official ``init_kwargs``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

from .networks import Generator
from .ops import setup_filter
from .safe_pickle import CheckpointError, PersistentObject, load_network_pickle

FORMAT_NAME = "recon-stylegan2"
FORMAT_VERSION = "1"
MAPPING_KEYS = ("num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta")
SYNTHESIS_KEYS = ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture",
                  "resample_filter", "use_noise")
TOP_KEYS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------------------------
# Config

def normalize_config(cfg: dict, source: str = "config") -> dict:
    """Validate constructor arguments and return them in the canonical nested form.

    Accepts the official ``init_kwargs`` layout of stylegan2-ada-pytorch (nested
    ``synthesis_kwargs``) and of the stylegan3 repository (synthesis arguments at top level), or a
    dict with an ``init_kwargs`` key (as in the golden ``config.json``).
    """
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: generator config must be a JSON object")
    if "init_kwargs" in cfg and isinstance(cfg["init_kwargs"], dict):
        cfg = cfg["init_kwargs"]
    missing = [k for k in TOP_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"{source}: generator config lacks {', '.join(missing)}")
    out = {k: int(cfg[k]) for k in TOP_KEYS}
    mk = dict(cfg.get("mapping_kwargs") or {})
    sk = dict(cfg.get("synthesis_kwargs") or {})
    sk.update({k: cfg[k] for k in SYNTHESIS_KEYS if k in cfg})  # stylegan3 repo: flat kwargs
    unknown = sorted(set(mk) - set(MAPPING_KEYS)) + sorted(set(sk) - set(SYNTHESIS_KEYS))
    if unknown:
        raise CheckpointError(f"{source}: unsupported generator options {unknown}")
    if sk.get("architecture", "skip") not in ("orig", "skip", "resnet"):
        raise CheckpointError(f"{source}: unknown architecture {sk['architecture']!r}")
    out["mapping_kwargs"] = mk
    out["synthesis_kwargs"] = sk
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read generator config: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# Official pickles

def _params(obj: PersistentObject) -> dict:
    return dict(obj.get("_parameters") or {})


def _collect_state(obj: PersistentObject, prefix: str, out: dict) -> None:
    """Flatten a pickled module tree into a state_dict (parameters, then persistent buffers)."""
    for name, t in _params(obj).items():
        if t is not None:
            out[prefix + name] = t
    skip = set(obj.get("_non_persistent_buffers_set") or ())
    for name, t in dict(obj.get("_buffers") or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t
    for name, child in obj.modules.items():
        if child is None:
            continue
        if not isinstance(child, PersistentObject):
            raise CheckpointError(f"submodule {prefix + name} is not a persistent network module")
        _collect_state(child, f"{prefix}{name}.", out)


def config_from_pickled_generator(G: PersistentObject) -> dict:
    """Rebuild the constructor arguments of a pickled StyleGAN2 generator from its resolved state."""
    if G.class_name != "Generator":
        raise CheckpointError(f"expected a Generator, found {G.class_name}")
    init = dict(G.get("_init_kwargs") or {})
    syn, mapping = G.modules.get("synthesis"), G.modules.get("mapping")
    if not isinstance(syn, PersistentObject) or not isinstance(mapping, PersistentObject):
        raise CheckpointError("generator has no synthesis/mapping networks")
    if "block_resolutions" not in syn.state:
        raise CheckpointError(f"{syn.class_name} is not a StyleGAN2 synthesis network "
                              "(StyleGAN3 generators are not supported)")
    cfg = {k: int(G.get(k, init.get(k))) for k in TOP_KEYS}
    sk_init = dict(init.get("synthesis_kwargs") or {})
    sk_init.update({k: init[k] for k in SYNTHESIS_KEYS if k in init})

    resolutions = [int(r) for r in syn.state["block_resolutions"]]
    blocks = [syn.modules[f"b{r}"] for r in resolutions]
    last_conv = blocks[-1].modules["conv1"]
    sk = {
        "channel_base": int(sk_init.get("channel_base", 32768)),
        "channel_max": int(sk_init.get("channel_max", 512)),
        "architecture": str(blocks[-1].get("architecture")),
        "conv_clamp": last_conv.get("conv_clamp"),
        "use_noise": bool(last_conv.get("use_noise", True)),
        "resample_filter": list(sk_init.get("resample_filter", [1, 3, 3, 1])),
    }
    if sk["conv_clamp"] is not None:
        sk["conv_clamp"] = float(sk["conv_clamp"])
    # Channel counts come from the weights; channel_base/max must reproduce them.
    for r, block in zip(resolutions, blocks):
        have = int(_params(block.modules["conv1"])["weight"].shape[0])
        want = min(sk["channel_base"] // r, sk["channel_max"])
        if have != want:
            raise CheckpointError(f"block b{r} has {have} channels, but channel_base={sk['channel_base']} "
                                  f"and channel_max={sk['channel_max']} give {want}")
    filt = dict(blocks[0].get("_buffers") or {}).get("resample_filter")
    if filt is not None and not torch.allclose(filt, setup_filter(sk["resample_filter"])):
        raise CheckpointError("resample_filter buffer does not match the configured filter taps")
    # The fp16 blocks are the top ones; count them rather than trusting the init argument.
    n_fp16 = sum(bool(b.get("use_fp16", False)) for b in blocks)
    sk["num_fp16_res"] = int(sk_init.get("num_fp16_res", n_fp16)) if n_fp16 else 0
    log2 = len(resolutions) + 1
    fp16_res = max(2 ** (log2 + 1 - sk["num_fp16_res"]), 8)
    if sum(r >= fp16_res for r in resolutions) != n_fp16:
        sk["num_fp16_res"] = n_fp16

    fc0 = mapping.modules["fc0"]
    num_layers = int(mapping.get("num_layers"))
    mk = {
        "num_layers": num_layers,
        "activation": str(fc0.get("activation", "lrelu")),
        "lr_multiplier": float(fc0.get("bias_gain", 0.01)),
        "w_avg_beta": None if mapping.get("w_avg_beta") is None else float(mapping.get("w_avg_beta")),
        "layer_features": int(_params(fc0)["weight"].shape[0]) if num_layers > 1 else None,
        "embed_features": (int(_params(mapping.modules["embed"])["weight"].shape[0])
                           if cfg["c_dim"] > 0 else None),
    }
    cfg["mapping_kwargs"] = mk
    cfg["synthesis_kwargs"] = sk
    return cfg


def _generator_from_pickle(path: Path):
    data = load_network_pickle(path)
    if isinstance(data, dict):
        G = data.get("G_ema")
        if G is None:
            keys = ", ".join(map(str, data.keys())) or "none"
            raise CheckpointError(f"{path}: pickle holds no generator 'G_ema' (keys: {keys})")
    else:
        G = data
    if not isinstance(G, PersistentObject):
        raise CheckpointError(f"{path}: pickle holds no network (found {type(G).__name__})")
    try:
        cfg = config_from_pickled_generator(G)
        state = {}
        _collect_state(G, "", state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"{path}: pickled generator lacks expected fields ({type(exc).__name__}: {exc})") from exc
    return cfg, state


# ----------------------------------------------------------------------------------------------
# safetensors

def _generator_from_safetensors(path: Path, config):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if config is None and "recon_config" in meta:
        try:
            config = json.loads(meta["recon_config"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: corrupt recon_config metadata ({exc})") from exc
    source = str(path)
    if config is None:
        for sidecar in (path.with_suffix(".json"), path.parent / "config.json"):
            if sidecar.is_file():
                config, source = _read_json(sidecar), str(sidecar)
                break
    elif isinstance(config, (str, os.PathLike)):
        source = str(config)
        config = _read_json(Path(config))
    if config is None:
        raise CheckpointError(f"{path}: no generator config (no recon_config metadata, no "
                              f"{path.with_suffix('.json').name} or config.json beside it)")
    return normalize_config(config, source), state


# ----------------------------------------------------------------------------------------------
# Public API

def build_generator(cfg: dict, state: dict, source: str = "checkpoint") -> Generator:
    """Construct a Generator from a config and fill it with exactly the given tensors."""
    cfg = normalize_config(cfg, source)
    try:
        G = Generator(**cfg)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid generator config ({exc})") from exc
    own = G.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:5]}")
        raise CheckpointError(f"{source}: tensors do not fit the generator config: {'; '.join(parts)}")
    G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return G


def read_generator(path: PathLike, config=None):
    """Return ``(config, state_dict)`` from a ``.pkl`` or ``.safetensors`` checkpoint, without building."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: 8-byte header length, then the JSON header; pickles start with the PROTO opcode.
    is_pickle = path.suffix in (".pkl", ".pickle") or (head[:1] == b"\x80" and head[8:9] != b"{")
    if is_pickle:
        return _generator_from_pickle(path)
    return _generator_from_safetensors(path, config)


def load_generator(path: PathLike, device: Union[str, torch.device] = "cpu",
                   config: Optional[Union[dict, PathLike]] = None) -> Generator:
    """Load a StyleGAN2 generator for inference (eval mode, no gradients on its parameters).

    Args:
        path: official stylegan2-ada-pytorch / stylegan3 ``.pkl`` (its ``G_ema`` is returned) or a
            ``.safetensors`` file in the project's format.
        device: where to put it.
        config: for a bare state_dict ``.safetensors``: a dict or JSON path of ``init_kwargs``.
    """
    cfg, state = read_generator(path, config)
    G = build_generator(cfg, state, str(path))
    return G.eval().requires_grad_(False).to(device)


def save_generator(G: Generator, path: PathLike, overwrite: bool = False) -> Path:
    """Write ``G`` as one safetensors file with its config in the metadata (atomic)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True / --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in G.state_dict().items()}
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "recon_config": json.dumps(G.config, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def convert(src: PathLike, dst: PathLike, overwrite: bool = False) -> Path:
    """Convert an official ``.pkl`` (or any loadable checkpoint) to the project's safetensors format."""
    cfg, state = read_generator(src)
    return save_generator(build_generator(cfg, state, str(src)), dst, overwrite=overwrite)
