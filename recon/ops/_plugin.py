"""Lazy build of the CUDA kernels behind the custom ops.

The extension is compiled with ``torch.utils.cpp_extension.load`` (ninja) the first time a CUDA
tensor reaches a custom op, never at import. A failed build warns once and every op falls back to
its pure-PyTorch reference, so a broken toolchain costs speed, not correctness.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
SOURCES = ("ops.cpp", "bias_act_kernel.cu", "upfirdn2d_kernel.cu")

_lock = threading.Lock()
_state = {"tried": False, "module": None, "error": None}


def disabled() -> bool:
    """``RECON_NO_CUDA_OPS=1`` forces the reference ops (for debugging and A/B timing)."""
    return os.environ.get("RECON_NO_CUDA_OPS", "") not in ("", "0")


def get():
    """Return the compiled extension module, or None when it is unavailable (warned once)."""
    if disabled():
        return None
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            try:
                _state["module"] = _build()
            except Exception as exc:  # any toolchain failure: keep going on the reference ops
                _state["error"] = exc
                warnings.warn(
                    f"recon: could not build the CUDA ops ({type(exc).__name__}: {str(exc).strip()[:500]}); "
                    "falling back to the slower pure-PyTorch reference ops.",
                    RuntimeWarning, stacklevel=3)
        return _state["module"]


def _build():
    import torch
    from torch.utils import cpp_extension

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available")
    build_dir = Path(os.environ.get("RECON_EXT_DIR", Path.home() / ".cache" / "recon" / "torch_extensions"))
    build_dir = build_dir / f"torch{torch.__version__}-cuda{torch.version.cuda}".replace("+", "_")
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name="recon_ops",
        sources=[str(CUDA_DIR / s) for s in SOURCES],
        build_directory=str(build_dir),
        extra_cuda_cflags=["-O3"],
        verbose=os.environ.get("RECON_EXT_VERBOSE", "") not in ("", "0"),
    )
