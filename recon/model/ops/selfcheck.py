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
from typing import Callable, Dict, List, Optional, Tuple

import torch

# Largest error allowed, relative to the reference's largest magnitude (plus a small floor).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}
OPS = ("bias_act", "upfirdn2d")


def _max_rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    if not torch.isfinite(got).all():
        return float("inf")
    scale = float(want.abs().max()) + 1e-6
    return float((got - want).abs().max()) / scale


def _bias_act_cases() -> List[Tuple[str, Callable, Callable]]:
    from .bias_act import _BiasActCuda, _resolve, bias_act_ref

    cases = []
    for act in ("linear", "relu", "lrelu"):
        for clamp in (None, 0.5):
            spec, alpha, gain, clamp_v = _resolve(act, None, None, clamp)

            def fast(x, b, plugin, spec=spec, alpha=alpha, gain=gain, clamp_v=clamp_v):
                return _BiasActCuda.apply(x, b, 1, spec.cuda_code, alpha, gain, clamp_v, plugin)

            def ref(x, b, act=act, clamp=clamp):
                return bias_act_ref(x, b, 1, act, None, None, clamp)
            cases.append((f"{act}{'' if clamp is None else ' clamp'}", fast, ref))
    return cases


def _upfirdn2d_cases() -> List[Tuple[str, dict]]:
    f4 = [1.0, 3.0, 3.0, 1.0]
    return [("up2 4-tap", dict(f=f4, up=2, down=1, padding=[2, 1, 2, 1])),
            ("down2 4-tap", dict(f=f4, up=1, down=2, padding=[1, 1, 1, 1])),
            ("fir 4-tap", dict(f=f4, up=1, down=1, padding=[1, 2, 1, 2])),
            ("up2 odd pad", dict(f=f4, up=2, down=1, padding=[1, 2, 2, 1], flip=True))]


def check_op(name: str, plugin, device, dtype: torch.dtype, seed: int = 0) -> float:
    """The largest relative error (forward or input gradient) of ``plugin``'s op ``name`` against
    the reference on ``device`` in ``dtype``, over the generator's cases."""
    from .upfirdn2d import _UpFirDn2dCuda, _pair, _parse_padding, setup_filter, upfirdn2d_ref

    g = torch.Generator().manual_seed(seed)
    worst = 0.0

    def both(fast_out, ref_out, xs_fast, xs_ref, dy):
        nonlocal worst
        worst = max(worst, _max_rel_error(fast_out, ref_out))
        gf = torch.autograd.grad(fast_out, xs_fast, dy.to(fast_out.dtype))
        gr = torch.autograd.grad(ref_out, xs_ref, dy.to(ref_out.dtype))
        for a, b in zip(gf, gr):
            worst = max(worst, _max_rel_error(a, b))

    if name == "bias_act":
        for _, fast, ref in _bias_act_cases():
            x = torch.randn(2, 8, 9, 7, generator=g)
            b = torch.randn(8, generator=g)
            dy = torch.randn(2, 8, 9, 7, generator=g).to(device)
            xf = x.to(device, dtype).requires_grad_(True)
            bf = b.to(device, dtype)
            xr = x.to(device, dtype).double().requires_grad_(True)   # the reference in double
            both(fast(xf, bf, plugin), ref(xr, bf.double()), [xf], [xr], dy)
    elif name == "upfirdn2d":
        for _, c in _upfirdn2d_cases():
            f = setup_filter(c["f"], device)
            x = torch.randn(2, 5, 12, 10, generator=g)
            up, down, pad = _pair(c["up"], "up"), _pair(c["down"], "down"), _parse_padding(c["padding"])
            flip = c.get("flip", False)
            xf = x.to(device, dtype).requires_grad_(True)
            xr = x.to(device, dtype).double().requires_grad_(True)
            out_r = upfirdn2d_ref(xr, f.double(), c["up"], c["down"], c["padding"], flip, 1)
            dy = torch.randn(out_r.shape, generator=g).to(device)
            out_f = _UpFirDn2dCuda.apply(xf, f, up, down, pad, flip, 1, plugin)
            if out_f.shape != out_r.shape:
                return float("inf")
            both(out_f, out_r, [xf], [xr], dy)
    else:
        raise ValueError(f"no self-check for op {name!r}")
    return worst


def verify(plugin, device, dtypes=(torch.float32, torch.float16)) -> Dict[str, dict]:
    """Run every op's check; ``{op: {ok, error, dtype}}`` (the error of the dtype that came
    closest to, or went furthest past, its tolerance)."""
    verdict = {}
    for name in OPS:
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


def cache_key(device) -> str:
    """What a verdict depends on: the device, torch and CUDA versions, the kernel sources."""
    from ._plugin import CUDA_DIR, SOURCES

    h = hashlib.sha256()
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    cap = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else ()
    h.update(json.dumps([name, list(cap), torch.__version__, torch.version.cuda]).encode())
    for s in SOURCES:
        h.update((CUDA_DIR / s).read_bytes())
    return h.hexdigest()[:20]


def cached_verify(plugin, device, cache_file: Optional[Path]) -> Dict[str, dict]:
    """:func:`verify`, or the verdict cached in ``cache_file`` for this device and build; warns
    once per failing op (naming it, the error and the tolerance) that the reference is used."""
    key = cache_key(device)
    cache = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    verdict = cache.get(key)
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
