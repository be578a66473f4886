"""Lazy build of the CUDA kernels behind the custom ops, and their self-check.

The extension is compiled with ``torch.utils.cpp_extension.load`` (ninja) the first time a CUDA
tensor reaches a custom op, never at import. A failed build warns once and every op falls back to
its pure-PyTorch reference, so a broken toolchain costs speed, not correctness. Before an op's
kernel is used on a device it must pass :mod:`recon.model.ops.selfcheck` against the reference there
(the verdict is cached beside the build); an op that fails is warned about and not used.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Dict

from . import selfcheck

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
SOURCES = ("ops.cpp", "bias_act_kernel.cu", "upfirdn2d_kernel.cu")

_lock = threading.Lock()
_state: Dict[str, Any] = {"tried": False, "module": None, "error": None, "verdicts": {}}


def disabled() -> bool:
    """``RECON_NO_CUDA_OPS=1`` forces the reference ops (for debugging and A/B timing)."""
    return os.environ.get("RECON_NO_CUDA_OPS", "") not in ("", "0")


# ``impl='auto'`` sends an op's input to its kernel only from this many elements up. Measured on
# an H200 (recon.model.ops.timing, forward+backward): upfirdn2d's kernel beat the reference on every
# generator shape tried, 1.07-1.29x on the 0.8M-element ToRGB upsampling and 2.5-4.5x from 34M;
# bias_act's lost at 2M and 17M elements (0.70-0.84x: both paths were bound by host overhead, and
# the kernel's is a Python autograd function) and won at 34M (1.56-3.01x). A batch-1 1024 px
# projection step took 0.101 s with every op on the kernels and 0.084 s with none.
KERNEL_MIN_NUMEL = {"upfirdn2d": 1 << 20, "bias_act": 1 << 25}


def worth_a_kernel(op: str, x, impl: str) -> bool:
    """Whether ``x`` goes to op ``op``'s compiled kernel: ``impl='cuda'`` always (when it passed
    its self-check), ``'auto'`` for a large enough CUDA tensor outside ``torch.compile``."""
    if impl == "ref" or not x.is_cuda:
        return False
    return impl == "cuda" or (x.numel() >= KERNEL_MIN_NUMEL[op] and not compiling())


def compiling() -> bool:
    """Inside ``torch.compile``'s tracing, ``impl='auto'`` takes the reference ops: the compiler
    fuses them itself, while an opaque extension call would split the compiled graph."""
    import torch
    return torch.compiler.is_compiling()


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


def build_dir() -> Path:
    import torch
    root = Path(os.environ.get("RECON_EXT_DIR", Path.home() / ".cache" / "recon" / "torch_extensions"))
    return root / f"torch{torch.__version__}-cuda{torch.version.cuda}".replace("+", "_")


def sources_digest() -> str:
    """A digest of the kernel sources: a changed kernel is checked again."""
    h = hashlib.sha256()
    for s in SOURCES:
        h.update((CUDA_DIR / s).read_bytes())
    return h.hexdigest()


def for_op(name: str, device):
    """The extension for op ``name`` on ``device`` if it is built and its kernel passed the
    self-check there; None means: use the reference."""
    module = get()
    if module is None:
        return None
    key = str(device)
    verdict = _state["verdicts"].get(key)
    if verdict is None:
        with _lock:
            verdict = _state["verdicts"].get(key)
            if verdict is None:
                verdict = _state["verdicts"][key] = selfcheck.cached_verify(
                    module, device, build_dir() / "selfcheck.json", sources_digest())
    return module if verdict.get(name, {}).get("ok") else None


def status() -> dict:
    """For ``recon doctor``: ``{state, error, verdicts}``; state is disabled, not tried, built or
    failed."""
    if disabled():
        state = "disabled (RECON_NO_CUDA_OPS)"
    elif not _state["tried"]:
        state = "not built yet"
    else:
        state = "built and loaded" if _state["module"] is not None else "build failed"
    err = _state["error"]
    return dict(state=state, error=f"{type(err).__name__}: {str(err).strip()[:300]}" if err else None,
                verdicts=dict(_state["verdicts"]))


def _build():
    import torch
    from torch.utils import cpp_extension

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available")
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name="recon_ops",
        sources=[str(CUDA_DIR / s) for s in SOURCES],
        build_directory=str(directory),
        extra_cuda_cflags=["-O3", "--use_fast_math"],
        verbose=os.environ.get("RECON_EXT_VERBOSE", "") not in ("", "0"),
    )
