"""``torch.compile`` where it pays, and never at the cost of a run: a compiled function that
fails to compile or to run warns once and falls back to the eager one.

``project.runtime.compile``: ``on``, ``off`` or ``auto``. ``auto`` compiles on CUDA (the step is
thousands of small kernels at batch 1, which compilation fuses and CUDA graphs launch at once:
``mode="reduce-overhead"``) and not on CPU, where the measured gain (see the README's Speed
section) does not repay the minute of compilation for typical runs.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch

SETTINGS = ("auto", "on", "off")


def resolve_compile(setting: str, device) -> bool:
    if setting not in SETTINGS:
        raise ValueError(f"compile must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting == "auto":
        return torch.device(device).type == "cuda"
    return setting == "on"


class CompiledOrEager:
    """Calls ``torch.compile(fn)``; the first failure warns (naming ``what`` and the error) and
    every later call runs ``fn`` itself. Shapes are static (``dynamic=False``): a new shape (the
    W -> W+ switch, the last smaller batch) compiles, and on CUDA captures, once more.
    ``RECON_COMPILE_MODE`` (``default``, ``reduce-overhead``, ...) overrides torch.compile's mode,
    for experiments."""

    def __init__(self, fn: Callable, device, what: str = "the projection step"):
        self.fn, self.what = fn, what
        mode = os.environ.get("RECON_COMPILE_MODE") or ("reduce-overhead" if torch.device(device).type == "cuda"
                                                        else "default")
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
