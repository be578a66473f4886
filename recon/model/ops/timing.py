"""Time each CUDA kernel against its pure-PyTorch reference on the shapes a config-f generator
(1024 px) gives it, forward and forward+backward, float32 and float16: the numbers that say
whether the compiled ops pay on a device.

    python -m recon.model.ops.timing [--batch 1 8] [--reps 30]

Times are medians of ``--reps`` CUDA-event-timed calls after warm-up, on random inputs (never
zeros). Each case first checks that the kernel agrees with the reference.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any, Dict, List, Tuple

import torch

from .bias_act import bias_act
from .upfirdn2d import setup_filter, upfirdn2d

# (label, op, input shape without batch, kwargs): what conv2d_resample and the ToRGB skip path
# ask of the ops at the top layers of config-f (channels 32-128 at 256-1024 px).
CASES: List[Tuple[str, str, Tuple[int, ...], Dict[str, Any]]] = [
    ("upfirdn2d fir after up-conv", "upfirdn2d", (32, 1025, 1025), dict(padding=[1, 1, 1, 1], gain=4)),
    ("upfirdn2d up2 (ToRGB skip)", "upfirdn2d", (3, 512, 512), dict(up=2, padding=[2, 1, 2, 1], gain=4)),
    ("upfirdn2d down2", "upfirdn2d", (32, 1024, 1024), dict(down=2, padding=[1, 1, 1, 1])),
    ("bias_act lrelu clamp 1024 px", "bias_act", (32, 1024, 1024), dict(act="lrelu", clamp=256.0)),
    ("bias_act lrelu 64 px", "bias_act", (512, 64, 64), dict(act="lrelu")),
]


def _median_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_case(op: str, shape, kwargs: dict, batch: int, dtype: torch.dtype, reps: int, device="cuda"):
    """``{impl: (forward ms, forward+backward ms)}`` and the kernel's largest relative error."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((batch,) + tuple(shape), generator=g, device=device).to(dtype).requires_grad_(True)
    f = setup_filter([1, 3, 3, 1], device=device)
    b = torch.randn(shape[0], generator=g, device=device).to(dtype)

    def call(impl):
        if op == "upfirdn2d":
            return upfirdn2d(x, f, impl=impl, **kwargs)
        return bias_act(x, b, impl=impl, **kwargs)

    out = {}
    ref = call("ref").detach()
    got = call("cuda").detach()
    err = float((got.double() - ref.double()).abs().max() / (ref.double().abs().max() + 1e-6))
    dy = torch.randn(ref.shape, generator=g, device=device).to(dtype)
    for impl in ("cuda", "ref"):
        with torch.no_grad():
            fwd = _median_ms(lambda: call(impl), reps)

        def both():
            y = call(impl)
            torch.autograd.grad(y, x, dy)
        out[impl] = (fwd, _median_ms(both, reps))
    return out, err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time (on CPU only the reference ops run)", file=sys.stderr)
        return 1
    print(f"\nCUDA ops vs reference: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"medians of {args.reps} (CUDA events)\n")
    print("| op | batch | dtype | kernel fwd ms | ref fwd ms | kernel fwd+bwd ms | ref fwd+bwd ms "
          "| fwd+bwd speed-up | max rel error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, op, shape, kwargs in CASES:
        for batch in args.batch:
            for dtype in (torch.float32, torch.float16):
                t, err = time_case(op, shape, kwargs, batch, dtype, args.reps)
                print(f"| {label} | {batch} | {str(dtype)[6:]} | {t['cuda'][0]:.3f} | {t['ref'][0]:.3f} | "
                      f"{t['cuda'][1]:.3f} | {t['ref'][1]:.3f} | {t['ref'][1] / t['cuda'][1]:.2f}x | {err:.1e} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
