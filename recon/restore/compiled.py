"""``torch.compile`` where it pays, and never at the cost of a run: a compiled function that
fails to compile or to run warns once and falls back to the eager one.

``project.runtime.compile``: ``on``, ``off`` or ``auto``. ``auto``, from measurements (README,
Speed), compiles on CPU for generators of ``CPU_MIN_RESOLUTION`` px and up and runs of
``CPU_MIN_STEPS`` steps or more, and nowhere else. On CPU (1 thread) the compiled step is 10-15 %
faster, but a cold compilation takes minutes of wall time (107 s at 128 px against 3 s eager,
138 s against 7 s at 256 px; about a second once torch's on-disk cache holds the graph): at
256 px a step saves 0.19-0.28 s, repaid within 470-690 steps; at 128 px 0.04-0.06 s, which needs
1700-2900 steps. On CUDA nowhere: on an H200 (torch 2.11) compiling the 256 px config-f step took
over two minutes, longer than a whole batch-1 projection there, and with CUDA graphs
(``mode="reduce-overhead"``) the compiled backward crashed the process. ``on`` compiles with
torch.compile's default mode on every device.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import torch

SETTINGS = ("auto", "on", "off")


CPU_MIN_STEPS = 500          # runs this long repay a cold compilation on CPU at 256 px (see above)
CPU_MIN_RESOLUTION = 256


def resolve_compile(setting: str, device, num_steps: int, resolution: int) -> bool:
    """Whether to compile a run of ``num_steps`` steps of a ``resolution`` px generator on
    ``device`` (``auto``: see the module's docstring)."""
    if setting not in SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting == "auto":
        return (torch.device(device).type == "cpu" and num_steps >= CPU_MIN_STEPS
                and resolution >= CPU_MIN_RESOLUTION)
    return setting == "on"


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
