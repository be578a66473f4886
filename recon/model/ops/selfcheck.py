"""Kernels that prove themselves: before a compiled op is used on a device, it is run against its
pure-PyTorch reference on random inputs (forward and input gradient, float32 and float16, the
shapes the generator uses: up-2 / down-2 with 4-tap filters, plain FIR, every activation with and
without clamp). An op that disagrees beyond tolerance is not used: recon warns once, naming the op
and the error, and runs the reference. The verdict is cached beside the build, keyed by the
device, torch and the kernel sources, so the check runs once per build and device.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

# Largest error allowed, relative to the reference's largest magnitude (plus a small floor).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}

# op name -> check(plugin, device, dtype, generator) -> the largest relative error; each op module
# registers its own (with the shapes the generator gives it), so this harness knows no op.
Check = Callable[[object, object, torch.dtype, torch.Generator], float]
CHECKS: Dict[str, Check] = {}


def register(name: str) -> Callable[[Check], Check]:
    """Decorator: ``check`` is op ``name``'s self-check."""
    def add(check: Check) -> Check:
        CHECKS[name] = check
        return check
    return add


def max_rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        return float("inf")
    scale = float(want.abs().max()) + 1e-6
    return float((got - want).abs().max()) / scale


def forward_and_grad_error(fast_out: torch.Tensor, ref_out: torch.Tensor, fast_inputs: List[torch.Tensor],
                           ref_inputs: List[torch.Tensor], dy: torch.Tensor) -> float:
    """The largest relative error of a kernel's output and of its inputs' gradients for ``dy``."""
    worst = max_rel_error(fast_out, ref_out)
    gf = torch.autograd.grad(fast_out, fast_inputs, dy.to(fast_out.dtype))
    gr = torch.autograd.grad(ref_out, ref_inputs, dy.to(ref_out.dtype))
    for a, b in zip(gf, gr):
        worst = max(worst, max_rel_error(a, b))
    return worst


def check_op(name: str, plugin, device, dtype: torch.dtype, seed: int = 0) -> float:
    """The largest relative error (forward or input gradient) of ``plugin``'s op ``name`` against
    its reference on ``device`` in ``dtype``, over the cases the op registered."""
    if name not in CHECKS:
        raise ValueError(f"no self-check for op {name!r}")
    return CHECKS[name](plugin, device, dtype, torch.Generator().manual_seed(seed))


def verify(plugin, device, dtypes=(torch.float32, torch.float16)) -> Dict[str, dict]:
    """Run every op's check; ``{op: {ok, error, dtype}}`` (the error of the dtype that came
    closest to, or went furthest past, its tolerance)."""
    verdict = {}
    for name in CHECKS:
        ok, worst, worst_dtype, detail = True, 0.0, None, ""
        for dtype in dtypes:
            try:
                err = check_op(name, plugin, device, dtype)
            except Exception as exc:            # a kernel that crashes is as unusable as a wrong one
                err, detail = float("inf"), detail or f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            if worst_dtype is None or err / TOLERANCE[dtype] > worst / TOLERANCE[worst_dtype]:
                worst, worst_dtype = err, dtype
            ok = ok and err <= TOLERANCE[dtype]
        verdict[name] = dict(ok=ok, error=worst, dtype=str(worst_dtype).replace("torch.", ""), detail=detail)
    return verdict


def cache_key(device, build: str = "") -> str:
    """What a verdict depends on: the device, torch and CUDA versions, and ``build`` (a digest of
    the kernel sources)."""
    h = hashlib.sha256()
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    cap = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else ()
    h.update(json.dumps([name, list(cap), torch.__version__, torch.version.cuda, build]).encode())
    return h.hexdigest()[:20]


MAX_CACHE_BYTES = 1 << 20


def follows(verdict) -> bool:
    """Whether a cached ``verdict`` is one :func:`verify` writes: every registered op, each entry's
    ``ok`` following from its error and tolerance (a forged or damaged verdict is checked again)."""
    if not isinstance(verdict, dict) or set(verdict) != set(CHECKS):
        return False
    for v in verdict.values():
        if not (isinstance(v, dict) and isinstance(v.get("ok"), bool) and isinstance(v.get("detail"), str)
                and type(v.get("error")) in (int, float) and v.get("dtype") in ("float32", "float16")):
            return False
        if v["ok"] != (v["error"] <= TOLERANCE[getattr(torch, v["dtype"])]):
            return False
    return True


def cached_verify(plugin, device, cache_file: Optional[Path], build: str = "") -> Dict[str, dict]:
    """:func:`verify`, or the verdict cached in ``cache_file`` for this device and ``build``; warns
    once per failing op (naming it, the error and the tolerance) that the reference is used."""
    from recon.data.ownfiles import read_json
    key = cache_key(device, build)
    cache = {}
    if cache_file is not None and cache_file.is_file():
        try:       # recon's bounded reader (a failed kernel's error is infinite): a damaged cache is no cache
            cache = read_json(cache_file, max_bytes=MAX_CACHE_BYTES, finite=False)
        except (OSError, ValueError):
            cache = {}
    cache = cache if isinstance(cache, dict) else {}
    verdict = cache.get(key)
    verdict = verdict if follows(verdict) else None
    if verdict is None:
        verdict = verify(plugin, device)
        if cache_file is not None:
            cache[key] = verdict
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(cache, indent=1))
                tmp.replace(cache_file)
            except OSError:
                pass
    for name, v in verdict.items():
        if not v["ok"]:
            why = v["detail"] or f"max relative error {v['error']:.3g} in {v['dtype']}, tolerance " \
                                 f"{TOLERANCE[getattr(torch, v['dtype'])]:g}"
            warnings.warn(f"recon: the CUDA {name} kernel failed its self-check on {device} ({why}); "
                          f"using the pure-PyTorch reference for {name}", RuntimeWarning, stacklevel=3)
    return verdict
