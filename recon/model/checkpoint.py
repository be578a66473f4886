"""Load generators from official pickles or the project's safetensors format; convert between them.

The project's format is one ``.safetensors`` file: the official state_dict (official names, float32)
plus the generator's constructor arguments as JSON in the header metadata (key ``recon_config``).
A bare state_dict ``.safetensors`` (no metadata) loads with an explicit JSON config, or a sidecar
``<stem>.json`` / ``config.json`` beside it, holding the official ``init_kwargs``.
"""
from __future__ import annotations

import json
import os
import reprlib
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

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

# Bounds on what a checkpoint may describe, checked before anything is allocated. Every official
# StyleGAN2 generator is far inside them (FFHQ 1024 config-f: 30.4M parameters, 8 mapping layers).
MAX_PARAMETERS = 200_000_000          # 800 MB of float32 weights
MAX_DIM = 4096                        # z_dim, w_dim, mapping features, channels
MAX_RESOLUTION = 4096
MAX_MAPPING_LAYERS = 64


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


Dim = Annotated[int, Field(ge=1, le=MAX_DIM), Strict()]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class MappingConfig(_StrictModel):
    num_layers: Annotated[int, Field(ge=1, le=MAX_MAPPING_LAYERS), Strict()] = 8
    embed_features: Optional[Dim] = None
    layer_features: Optional[Dim] = None
    activation: Literal["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"] = "lrelu"
    lr_multiplier: FiniteFloat = 0.01
    w_avg_beta: Optional[FiniteFloat] = 0.995


class SynthesisConfig(_StrictModel):
    channel_base: Annotated[int, Field(ge=1, le=1 << 20), Strict()] = 32768
    channel_max: Dim = 512
    num_fp16_res: Annotated[int, Field(ge=0, le=16), Strict()] = 0
    conv_clamp: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = None
    architecture: Literal["orig", "skip", "resnet"] = "skip"
    resample_filter: Annotated[List[FiniteFloat], Field(min_length=1, max_length=16)] = [1, 3, 3, 1]
    use_noise: Annotated[bool, Strict()] = True


class GeneratorConfig(_StrictModel):
    z_dim: Dim
    c_dim: Annotated[int, Field(ge=0, le=MAX_DIM), Strict()]
    w_dim: Dim
    img_resolution: Annotated[int, Field(ge=4, le=MAX_RESOLUTION), Strict()]
    img_channels: Annotated[int, Field(ge=1, le=4), Strict()]
    mapping_kwargs: MappingConfig = MappingConfig()
    synthesis_kwargs: SynthesisConfig = SynthesisConfig()

    @model_validator(mode="after")
    def _shape(self):
        r, sk = self.img_resolution, self.synthesis_kwargs
        if r & (r - 1):
            raise ValueError(f"img_resolution must be a power of two, got {r}")
        if sk.channel_base < r:
            raise ValueError(f"synthesis_kwargs.channel_base {sk.channel_base} gives no channels at {r} px")
        return self


def count_parameters(cfg: dict) -> int:
    """The number of weights (parameters and buffers) that a normalized config builds, computed
    without building it; follows :class:`recon.networks.Generator` layer by layer."""
    mk, sk = cfg["mapping_kwargs"], cfg["synthesis_kwargs"]
    z, c, w = cfg["z_dim"], cfg["c_dim"], cfg["w_dim"]
    embed = (mk.get("embed_features") or w) if c else 0
    layer = mk.get("layer_features") or w
    n = c * embed + embed if c else 0
    features = [z + embed] + [layer] * (mk.get("num_layers", 8) - 1) + [w]
    n += sum(i * o + o for i, o in zip(features[:-1], features[1:])) + w        # fc layers, w_avg
    res = [2 ** i for i in range(2, int(cfg["img_resolution"]).bit_length())]
    ch = {r: min(sk.get("channel_base", 32768) // r, sk.get("channel_max", 512)) for r in res}
    rgb = cfg["img_channels"]

    def layer_cost(i, o, r, k=3):     # modulated conv: affine, weight, bias, noise map + strength, filter
        return (w * i + i) + o * i * k * k + o + r * r + 1 + taps
    taps = len(sk.get("resample_filter", [1, 3, 3, 1])) ** 2
    arch = sk.get("architecture", "skip")
    for r in res:
        o = ch[r]
        i = ch[r // 2] if r > 4 else 0
        n += taps + (o * 16 if r == 4 else layer_cost(i, o, r)) + layer_cost(o, o, r)
        if r == res[-1] or arch == "skip":
            n += (w * o + o) + rgb * o + rgb
        if arch == "resnet" and r > 4:
            n += i * o + taps
    return n


def normalize_config(cfg: dict, source: str = "config") -> dict:
    """Validate constructor arguments and return them in the canonical nested form.

    Accepts the official ``init_kwargs`` layout of stylegan2-ada-pytorch (nested
    ``synthesis_kwargs``) and of the stylegan3 repository (synthesis arguments at top level), or a
    dict with an ``init_kwargs`` key (as in the golden ``config.json``). Refuses, naming the field,
    configs whose types or sizes are not those of a StyleGAN2 generator, and any whose weights
    would exceed :data:`MAX_PARAMETERS`, before anything is allocated.
    """
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{source}: generator config must be a JSON object")
    if "init_kwargs" in cfg and isinstance(cfg["init_kwargs"], dict):
        cfg = cfg["init_kwargs"]
    missing = [k for k in TOP_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"{source}: generator config lacks {', '.join(missing)}")
    nested = {k: cfg[k] for k in TOP_KEYS}
    for key in ("mapping_kwargs", "synthesis_kwargs"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{source}: {key} must be a mapping, got {type(value).__name__}")
        nested[key] = dict(value or {})
    nested["synthesis_kwargs"].update({k: cfg[k] for k in SYNTHESIS_KEYS if k in cfg})  # stylegan3 repo: flat
    try:
        out = GeneratorConfig.model_validate(nested).model_dump(exclude_unset=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        what = "unsupported generator option" if err["type"] == "extra_forbidden" else \
            f"{err['msg'][len('Value error, '):] if err['msg'].startswith('Value error, ') else err['msg']}"
        prefix = f"{where}: " if where else ""
        raise CheckpointError(f"{source}: {prefix}{what} (got {_short(err.get('input'))})") from None
    out.setdefault("mapping_kwargs", {})
    out.setdefault("synthesis_kwargs", {})
    total = count_parameters(out)
    if total > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: the config describes {total:,} weights, more than recon loads "
                              f"({MAX_PARAMETERS:,}); no StyleGAN2 generator is that large")
    return out


def _short(value) -> str:
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, 40, 40
    return short.repr(value)


def read_config(path: PathLike) -> dict:
    """A checkpoint's normalized generator config; for ``.safetensors``, from the header alone."""
    path = Path(path)
    if _is_pickle(path):
        return read_generator(path)[0]
    return _safetensors_config(path, None, _safetensors_meta(path))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: cannot read generator config: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# Official pickles

def _params(obj: PersistentObject) -> dict:
    return dict(obj.get("_parameters") or {})


MAX_MODULE_DEPTH = 16    # Generator > synthesis > block > layer > ...: 4 deep in StyleGAN2


def _collect_state(obj: PersistentObject, prefix: str, out: dict, depth: int = 0) -> None:
    """Flatten a pickled module tree into a state_dict (parameters, then persistent buffers)."""
    if depth > MAX_MODULE_DEPTH:
        raise CheckpointError(f"modules nested more than {MAX_MODULE_DEPTH} deep at {prefix[:80]}...")
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
        _collect_state(child, f"{prefix}{name}.", out, depth + 1)


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
    cfg: Dict[str, Any] = {k: int(G.get(k, init.get(k))) for k in TOP_KEYS}
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
        state: Dict[str, torch.Tensor] = {}
        _collect_state(G, "", state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"{path}: pickled generator lacks expected fields ({type(exc).__name__}: {exc})") from exc
    return cfg, state


# ----------------------------------------------------------------------------------------------
# safetensors

def _safetensors_meta(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _safetensors_config(path: Path, config, meta: dict) -> dict:
    if config is None and "recon_config" in meta:
        try:
            config = json.loads(meta["recon_config"])
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{path}: corrupt recon_config metadata ({exc})") from None
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
    return normalize_config(config, source)


def _generator_from_safetensors(path: Path, config):
    from safetensors import SafetensorError, safe_open

    # The config is validated (and its size bounded) before any tensor is read.
    cfg = _safetensors_config(path, config, _safetensors_meta(path))
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return cfg, state


# ----------------------------------------------------------------------------------------------
# Public API

def build_generator(cfg: dict, state: dict, source: str = "checkpoint") -> Generator:
    """Construct a Generator from a config and fill it with exactly the given tensors."""
    cfg = normalize_config(cfg, source)
    not_float = [f"{k} is {str(v.dtype).replace('torch.', '') if isinstance(v, torch.Tensor) else type(v).__name__}"
                 for k, v in state.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point())]
    if not_float:
        raise CheckpointError(f"{source}: weights must be floating-point tensors, but {', '.join(not_float[:3])}"
                              f"{' ...' if len(not_float) > 3 else ''}")
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
    if _is_pickle(path):
        return _generator_from_pickle(path)
    return _generator_from_safetensors(path, config)


def _is_pickle(path: Path) -> bool:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: 8-byte header length, then the JSON header; pickles start with the PROTO opcode.
    return path.suffix in (".pkl", ".pickle") or (head[:1] == b"\x80" and head[8:9] != b"{")


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


def safetensors_bytes(state: dict, metadata: dict) -> bytes:
    """``state`` and ``metadata`` as safetensors bytes that depend on nothing but their contents.

    The safetensors library keeps the metadata in a hash map whose order changes from process
    to process, so one checkpoint converted twice gave different bytes (and DVC saw new weights).
    Here its header is written again with the metadata keys sorted; the tensors' entries keep the
    library's order and offsets, and the data after the header is the library's, unchanged."""
    import struct

    from safetensors.torch import save

    raw = save(state, metadata=metadata)
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps({"__metadata__": header.pop("__metadata__"), **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)          # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(text)) + text + raw[8 + length:]


def save_generator(G: Generator, path: PathLike, overwrite: bool = False) -> Path:
    """Write ``G`` as one safetensors file with its config in the metadata (atomic); the same
    network always gives the same bytes (:func:`safetensors_bytes`)."""
    from recon.data.imageio import write_atomic

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True / --force to replace it)")
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in G.state_dict().items()}
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "recon_config": json.dumps(G.config, sort_keys=True)}
    data = safetensors_bytes(state, meta)
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def convert(src: PathLike, dst: PathLike, overwrite: bool = False) -> Path:
    """Convert an official ``.pkl`` (or any loadable checkpoint) to the project's safetensors format."""
    cfg, state = read_generator(src)
    return save_generator(build_generator(cfg, state, str(src)), dst, overwrite=overwrite)
