"""``torch.compile`` where it pays, and never at the cost of a run: a compiled function that
fails to compile or to run warns once and falls back to the eager one.

``project.runtime.compile``: ``on``, ``off`` or ``auto``. ``auto`` decides from the stage's own
work (:class:`AutoCompile`): the first :data:`PROBE_STEPS` steps run eagerly and are timed; then
the step is compiled when what compilation saves on the steps still planned, ``planned x
eager step x`` :func:`saving` (the share a compiled step saves at the generator's resolution),
exceeds what it costs: :data:`COLD_COMPILE_S` the first time,
:data:`WARM_COMPILE_S` when torch's on-disk cache already holds this step (recon notes each step
it compiled, per torch version, device, generator and precision, in its per-user cache). The
stage says which, with the numbers. Measured on CPU (1 thread, fp32): the compiled step saves 9 %
at 128 px, 13 % at 256 px (against NVIDIA's projector: 1.48x -> 1.63x and 1.25x -> 1.44x) and
45 % at 1024 px (16.6 -> 9.1 s a step: fused elementwise work on the top layers' 67-134 MB
tensors); a cold compilation took 107-138 s of wall time (half of it in inductor's C++
compiler), a warm one about a second. On CUDA ``auto`` never compiles: on an H200 (torch 2.11) compiling the 256 px
config-f step took over two minutes, longer than a whole batch-1 projection there, and with CUDA
graphs (``mode="reduce-overhead"``) the compiled backward crashed the process. ``on`` compiles
with torch.compile's default mode on every device.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import torch

SETTINGS = ("auto", "on", "off")

PROBE_STEPS = 3              # eager steps timed before auto decides
# (resolution, share of an eager CPU step the compiled one saves), measured (fp32, 1 thread)
SAVINGS = ((128, 0.09), (256, 0.13), (1024, 0.45))
COLD_COMPILE_S = 150.0       # a first compilation (107-138 s measured at 128-256 px, more at 1024)
WARM_COMPILE_S = 5.0         # with torch's on-disk cache holding the step
MARKS = "compiled-steps.json"


def resolve_compile(setting: str, device) -> "bool | str":
    """``True``, ``False`` or ``"auto"`` (decided by the run itself, :class:`AutoCompile`) for
    ``project.runtime.compile: setting`` on ``device`` (auto never compiles on CUDA)."""
    if setting not in SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting == "auto":
        return "auto" if torch.device(device).type == "cpu" else False
    return setting == "on"


def saving(resolution: int) -> float:
    """The share of an eager CPU step that compiling saves at a generator ``resolution``: the
    measured :data:`SAVINGS`, interpolated in log2(resolution), the ends held beyond them."""
    import numpy as np
    return float(np.interp(np.log2(max(resolution, 1)), np.log2([r for r, _ in SAVINGS]), [v for _, v in SAVINGS]))


def compile_pays(planned_steps: int, eager_step_s: float, warm: bool, resolution: int) -> "tuple[bool, str]":
    """``(whether to compile, the reason in words)``: compile when ``planned_steps`` steps of
    ``eager_step_s`` at a generator ``resolution`` save more than a compilation costs (cold or
    warm)."""
    share = saving(resolution)
    saved = planned_steps * eager_step_s * share
    cost = WARM_COMPILE_S if warm else COLD_COMPILE_S
    what = "a compilation from torch's warm cache" if warm else "a first compilation"
    verdict = saved > cost
    return verdict, (f"{planned_steps} steps planned at {eager_step_s:.2g} s (eager, measured) would save about "
                     f"{saved:.0f} s ({share:.0%} at {resolution} px), {'more' if verdict else 'less'} than {what} "
                     f"costs (about {cost:.0f} s): {'compiling' if verdict else 'not compiling'}")


def _marks_path():
    from recon.model.weights import cache_dir
    return cache_dir() / MARKS


def step_key(G, precision: str, batch: int, device) -> str:
    """What identifies a compiled step in torch's cache: torch, device type, generator, precision, batch."""
    import hashlib
    import json
    return hashlib.sha256(json.dumps([torch.__version__, torch.device(device).type, G.config, precision, batch],
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def _marks() -> dict:
    """The marks file's entries; a missing, damaged or hostile file holds none (the bounded reader:
    a cold compilation assumed where a warm one was is the only cost)."""
    from recon.data.ownfiles import read_json
    try:
        marks = read_json(_marks_path(), max_bytes=1 << 20)
    except (OSError, ValueError):
        return {}
    return marks if isinstance(marks, dict) else {}


def is_warm(key: str) -> bool:
    """Whether this step was compiled here before (and torch's cache is where it was)."""
    return _marks().get(key) is True


def mark_warm(key: str) -> None:
    from recon.data.imageio import write_json
    path = _marks_path()
    marks = _marks()
    marks[key] = True
    write_json(path, marks)


class AutoCompile:
    """``compile: auto`` for one run: calls ``fn`` eagerly for :data:`PROBE_STEPS` calls (one per
    step) and times the steps between them; then compiles it (:class:`CompiledOrEager`) when
    :func:`compile_pays` for the steps still planned (``planned()``, read then), saying so with
    ``say``; ``key(*args)``: the step's :func:`step_key` for these arguments (warm or cold)."""

    def __init__(self, fn: Callable, device, planned: Callable[[], int], key: Callable[..., str], resolution: int,
                 say: Callable[[str], None] = lambda s: None, clock=None):
        import time
        self.fn, self.device, self.planned, self.key, self.say = fn, device, planned, key, say
        self.resolution = resolution
        self.clock = clock or time.perf_counter
        self.calls: list = []
        self.impl: Optional[Callable] = None

    def __call__(self, *args, **kwargs):
        if self.impl is None:
            self.calls.append(self.clock())
            if len(self.calls) > PROBE_STEPS:
                per_step = (self.calls[-1] - self.calls[0]) / (len(self.calls) - 1)
                key = self.key(*args)
                go, why = compile_pays(max(self.planned() - len(self.calls) + 1, 0), per_step, is_warm(key),
                                       self.resolution)
                self.say(f"compile auto: {why}")
                self.impl = CompiledOrEager(self.fn, self.device) if go else self.fn
                if go:
                    out = self.impl(*args, **kwargs)
                    if isinstance(self.impl, CompiledOrEager) and self.impl.failed is None:
                        mark_warm(key)
                    return out
            else:
                return self.fn(*args, **kwargs)
        return self.impl(*args, **kwargs)


class CompiledOrEager:
    """Calls ``torch.compile(fn)``; the first failure warns (naming ``what`` and the error) and
    every later call runs ``fn`` itself. Shapes are static (``dynamic=False``): a new shape (the
    W -> W+ switch, the last smaller batch) compiles once more. ``RECON_COMPILE_MODE`` (for
    example ``reduce-overhead``: CUDA graphs) overrides torch.compile's mode, for experiments."""

    def __init__(self, fn: Callable, device, what: str = "the projection step"):
        self.fn, self.what = fn, what
        mode = os.environ.get("RECON_COMPILE_MODE") or "default"
        self.graphs = mode == "reduce-overhead"
        self.compiled = torch.compile(fn, dynamic=False, mode=None if mode == "default" else mode)
        self.failed: Optional[str] = None

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                if self.graphs:
                    # Each call is one step: what the caller keeps of the last step's outputs it
                    # has copied, so the captured graph may reuse their memory.
                    torch.compiler.cudagraph_mark_step_begin()
                return self.compiled(*args, **kwargs)
            except Exception as exc:        # any compiler failure: the eager function gives the same result
                self.failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                warnings.warn(f"recon: could not compile {self.what} ({self.failed}); running it uncompiled",
                              RuntimeWarning, stacklevel=2)
        return self.fn(*args, **kwargs)
