"""Where a projection step's time goes, by part: ``python -m recon.profile``.

    python -m recon.profile [--shapes 128:8192:256 256:16384:512 1024:32768:512] [--precision fp32 bf16]
                            [--steps 3] [--vgg vgg16.pt] [--json FILE]

One official-method step at batch 1 (recon's projector, the official settings, a random-weight
generator of the official layout and NVIDIA's VGG16 architecture with random weights unless
``--vgg``), cut into its parts by timestamps on one thread (CPU ops run where they are called, one
after the other, so the process's CPU time between two marks is what ran between them):

* each generator block, forward (its start and end) and backward (from the gradient reaching the
  block's outputs to it reaching the previous block's: autograd runs the blocks back in order);
* VGG16 forward and backward (from the backward pass's start to the gradient reaching its input:
  the loss's own few ops included), the degradation forward and backward;
* the regularizers (noise autocorrelation, latent distance: forward, and their backward timed
  apart), the optimizer (Adam and the noise maps' renormalization);
* the rest of the step: the host work of the loop (schedule, w-noise, bookkeeping, Python).

Medians over ``--steps`` steps after a warm-up step; process CPU time (run with
``OMP_NUM_THREADS=1`` to compare with the bench). The table gives milliseconds per step and the
share of the step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from typing import Dict, List

import torch

clock = time.process_time


class Marks:
    """Named timestamps of one step (the first of each name kept)."""

    def __init__(self):
        self.t: Dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.t.setdefault(name, clock())

    def grad_mark(self, tensor, name: str) -> None:
        """Mark ``name`` when the gradient of ``tensor`` is computed."""
        if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            def hook(grad):
                self.mark(name)
                return grad
            tensor.register_hook(hook)


@contextmanager
def instrumented(method, run, marks_ref: List[Marks]):
    """Hooks on the method's generator blocks, perceptual function, degradation, regularizer and
    optimizer that put timestamps into ``marks_ref[0]`` (replaced by the caller each step)."""
    from recon.restore import official

    G = method.G
    blocks = G.synthesis.blocks()
    handles = []
    for block in blocks:
        r = block.resolution

        def pre(module, args, kwargs, r=r):
            marks_ref[0].mark(f"b{r}.fwd.start")

        def post(module, args, kwargs, out, r=r):
            marks_ref[0].mark(f"b{r}.fwd.end")
            for t in out:
                marks_ref[0].grad_mark(t, f"b{r}.bwd.start")
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    perceptual, reg = method.perceptual, official.noise_regularization

    def timed_perceptual(img):
        m = marks_ref[0]
        m.mark("vgg.fwd.start")
        m.grad_mark(img, "vgg.bwd.end")
        out = perceptual(img)
        m.mark("vgg.fwd.end")
        return out

    def timed_reg(noise):
        m = marks_ref[0]
        m.mark("reg.fwd.start")
        out = reg(noise)
        m.mark("reg.fwd.end")
        return out
    method.perceptual = timed_perceptual
    official.noise_regularization = timed_reg
    degradation = run.degradation
    if degradation is not None:
        run.degradation = _Timed(degradation, marks_ref)
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        method.perceptual = perceptual
        official.noise_regularization = reg
        run.degradation = degradation


class _Timed:
    """A degradation whose calls are timed (its other attributes are the degradation's)."""

    def __init__(self, inner, marks_ref: List[Marks]):
        self.inner, self.marks_ref = inner, marks_ref

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, img, **kw):
        m = self.marks_ref[0]
        m.mark("degrade.fwd.start")
        out = self.inner(img, **kw)
        m.mark("degrade.fwd.end")
        return out


def step_parts(method, run, draws) -> Dict[str, float]:
    """One step of ``run``, cut into parts (seconds of process CPU time)."""
    from recon.restore.official import noise_regularization

    marks = Marks()
    ref = [marks]
    terms = method.terms

    def timed_terms(*a, **k):
        out = terms(*a, **k)
        marks.mark("backward.start")            # what follows is the loss's sum, zero_grad and backward
        return out
    method.terms = timed_terms
    marks.grad_mark(run.w_opt, "backward.end")  # the latent is the last the gradient reaches
    try:
        with instrumented(method, run, ref):
            t0 = clock()
            run.advance(draws)
            t1 = clock()
    finally:
        method.terms = terms
    t = marks.t
    blocks = [b.resolution for b in method.G.synthesis.blocks()]
    parts: Dict[str, float] = {}
    for r in blocks:
        parts[f"generator {r} px, forward"] = t[f"b{r}.fwd.end"] - t[f"b{r}.fwd.start"]
    # backward: the gradient reaches block R's outputs first, then each block's previous one
    order = list(reversed(blocks))
    for k, r in enumerate(order):
        end = t[f"b{order[k + 1]}.bwd.start"] if k + 1 < len(order) else t["backward.end"]
        parts[f"generator {r} px, backward"] = end - t[f"b{r}.bwd.start"]
    parts["VGG16, forward"] = t["vgg.fwd.end"] - t["vgg.fwd.start"]
    vgg_bwd = t["vgg.bwd.end"] - t["backward.start"]
    with torch.enable_grad():          # the regularizers' backward, timed apart (autograd interleaves it)
        noise = {k: v.detach().clone().requires_grad_(True) for k, v in run.noise.items()}
        r0 = clock()
        noise_regularization(noise).sum().backward()
        reg_bwd = clock() - r0
    parts["VGG16, backward"] = max(vgg_bwd - reg_bwd, 0.0)
    if "degrade.fwd.start" in t:
        parts["degradation, forward"] = t["degrade.fwd.end"] - t["degrade.fwd.start"]
        parts["degradation, backward"] = t[f"b{blocks[-1]}.bwd.start"] - t["vgg.bwd.end"]
    parts["regularizers, forward and backward"] = t["reg.fwd.end"] - t["reg.fwd.start"] + reg_bwd
    parts["optimizer (Adam, noise renormalization)"] = t1 - t["backward.end"]
    parts["host: the loop around the parts"] = (t1 - t0) - sum(parts.values())
    parts["step"] = t1 - t0
    return parts


def profile_shape(shape: str, precision: str, steps: int, vgg_path: str = "", degrade: str = "") -> Dict[str, float]:
    """Median seconds per part of ``steps`` steps (after a warm-up one) at ``shape``
    (``resolution:channel_base:channel_max``)."""
    from recon.bench import random_generator, vgg_module
    from recon.config import ProjectorConfig
    from recon.restore import make_method
    from recon.restore.degrade import Degradation, parse_ops
    from recon.restore.randomness import TorchRandom, step_draws

    res, cb, cm = (int(v) for v in shape.split(":"))
    G = random_generator(res, cb, cm, torch.device("cpu"))
    vgg, _ = vgg_module(vgg_path, torch.device("cpu"))
    method = make_method(G, vgg, ProjectorConfig(num_steps=100, w_avg_samples=1000, snapshot_every=0),
                         precision=precision)
    targets = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1
    d = Degradation(parse_ops(degrade), res) if degrade else None
    rngs = [TorchRandom(0)]
    rows: List[Dict[str, float]] = []
    from recon.restore.precision import numerics
    with numerics(precision, "cpu"):
        run = method.start(targets if d is None else d.target(targets), d, rngs, None)
        for k in range(steps + 1):
            parts = step_parts(method, run, step_draws(rngs, k))
            if k:
                rows.append(parts)
    return {name: statistics.median(r[name] for r in rows) for name in rows[0]}


def table(results: Dict[tuple, Dict[str, float]]) -> str:
    """Markdown: a row per part, a column pair (ms, share) per (shape, precision)."""
    keys = list(results)
    parts: List[str] = []
    for r in sorted(results.values(), key=len, reverse=True):   # every part of every shape, in the step's order
        parts += [p for p in r if p not in parts]
    parts = [p for p in parts if p != "step"] + ["step"]
    head = "| part | " + " | ".join(f"{s.split(':')[0]} px {p} ms | share" for s, p in keys) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(keys))]
    for part in parts:
        cells = []
        for key in keys:
            v, step = results[key].get(part), results[key]["step"]
            cells += ["–", ""] if v is None else [f"{1000 * v:.1f}", f"{100 * v / step:.1f} %"]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recon.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["128:8192:256", "256:16384:512", "1024:32768:512"])
    ap.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--vgg", default="", help="NVIDIA's vgg16.pt (default: a random-weight stand-in)")
    ap.add_argument("--degrade", default="", help="a degradation to profile with (default none), e.g. blur")
    ap.add_argument("--json", help="also write the medians here")
    args = ap.parse_args(argv)
    results = {}
    for shape in args.shapes:
        for precision in args.precision:
            results[(shape, precision)] = profile_shape(shape, precision, args.steps, args.vgg, args.degrade)
            print(f"  {shape} {precision}: {results[(shape, precision)]['step']:.3f} s/step", file=sys.stderr)
    print(f"\nwhere a step goes: {torch.get_num_threads()} threads, process CPU time, medians of {args.steps} "
          "steps after a warm-up\n")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{s} {p}": r for (s, p), r in results.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
