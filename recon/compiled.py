"""``torch.compile`` where it pays, and never at the cost of a run: a compiled function that
fails to compile or to run warns once and falls back to the eager one.

``project.runtime.compile``: ``on``, ``off`` or ``auto``. ``auto`` compiles nowhere, from
measurements (README, Speed): on CPU the compiled step is 1.3-1.4x faster but compiling costs
about what a 1000-step run saves; on an H200 (torch 2.11) compiling the 256 px config-f step took
over two minutes, longer than a whole batch-1 projection there, and with CUDA graphs
(``mode="reduce-overhead"``) the compiled backward crashed the process. ``on`` compiles with
torch.compile's default mode on every device.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

SETTINGS = ("auto", "on", "off")


def resolve_compile(setting: str, device) -> bool:
    """Whether to compile on ``device``; ``auto`` is off on every device measured so far."""
    if setting not in SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(SETTINGS)}, got {setting!r}")
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
        self.failed = None

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
