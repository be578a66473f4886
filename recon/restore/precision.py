"""The arithmetic a restoration step runs in: ``project.runtime.precision``.

* ``fp32``: IEEE float32 everywhere (TF32 tensor-core math off, although torch lets cuDNN use it
  by default): the exact path, equal to NVIDIA's projector run the same way; the default.
* ``tf32``: CUDA only; convolutions and matrix products on TF32 tensor cores (10-bit mantissa
  inputs, float32 accumulation), everything else float32.
* ``bf16``: ``torch.autocast`` to bfloat16 for the step's forward pass (convolutions and matrix
  products in bfloat16, their outputs bfloat16 where torch's autocast lists say so); the
  perceptual distance, the loss, the optimizer's state and the latents stay float32, and the
  final image is rendered in float32. On CPUs with AVX512-BF16 or AMX oneDNN runs bfloat16
  convolutions natively; elsewhere they are emulated and slower than float32.

Whether a speed mode may be called equivalent to fp32 is decided by the quality gate
(:mod:`recon.pipeline.gate`), which ``auto`` consults.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Iterator, Optional

import torch

MODES = ("fp32", "tf32", "bf16")
SETTINGS = ("auto",) + MODES


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def unavailable(mode: str, device) -> Optional[str]:
    """Why ``mode`` cannot run on ``device`` (None: it can)."""
    device = torch.device(device)
    if mode not in MODES:
        raise ValueError(f"precision must be one of {', '.join(SETTINGS)}, got {mode!r}")
    if mode == "tf32" and device.type != "cuda":
        return "tf32 is a CUDA tensor-core mode"
    if mode == "tf32" and torch.cuda.get_device_capability(device)[0] < 8:
        return f"tf32 needs an Ampere or later GPU ({torch.cuda.get_device_name(device)} is not)"
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bfloat16 arithmetic"
    return None


def candidates(device) -> list:
    """The modes worth gating on ``device``: fp32 and every available speed mode (on a CPU without
    native bfloat16, bf16 is emulated and slower, so it is left out)."""
    device = torch.device(device)
    modes = [m for m in MODES if unavailable(m, device) is None]
    if device.type == "cpu" and not cpu_has_bf16():
        modes.remove("bf16")
    return modes


@contextlib.contextmanager
def numerics(mode: str, device) -> Iterator[None]:
    """The process-wide math flags of ``mode`` for a whole run (forward and backward), restored
    after: TF32 tensor-core math on for ``tf32``, off otherwise."""
    problem = unavailable(mode, device)
    if problem:
        raise ValueError(f"precision {mode}: {problem}")
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def forward(mode: str, device) -> ContextManager:
    """The context of a step's forward pass: autocast to bfloat16 for ``bf16``, nothing otherwise
    (the backward pass runs outside it, in the dtypes the forward chose)."""
    if mode == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
