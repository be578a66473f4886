"""Fused bias + activation + gain + clamp, the elementwise tail of every StyleGAN2 layer.

``y = clamp(act(x + b) * gain, -clamp, clamp)`` where ``b`` is broadcast along ``dim``.
One entry point, :func:`bias_act`; ``impl='ref'`` is plain PyTorch, ``impl='cuda'`` a compiled
kernel (first-order gradients), ``impl='auto'`` picks the kernel for large CUDA tensors when it
builds and passes its self-check (see ``_plugin.KERNEL_MIN_NUMEL``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import _plugin, selfcheck


@dataclass(frozen=True)
class Activation:
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    cuda_code: int  # 0 = no CUDA kernel for this activation


ACTIVATIONS = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0, 1),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 2),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 3),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0, 0),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 0),
    "elu": Activation(lambda x, a: F.elu(x), 0.0, 1.0, 0),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0, 0),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0, 0),
    "swish": Activation(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 0),
}


def _resolve(act: str, alpha, gain, clamp):
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(-1 if clamp is None else clamp)
    return spec, alpha, gain, clamp


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None, clamp: Optional[float] = None,
             impl: str = "auto") -> torch.Tensor:
    """Add bias, apply activation, scale by gain, clamp.

    Args:
        x: input of any shape, e.g. ``[N, C, H, W]``.
        b: bias ``[x.shape[dim]]`` or None.
        dim: the dimension of ``x`` that ``b`` runs along.
        act: ``'linear'``, ``'relu'``, ``'lrelu'``, ... (see ``ACTIVATIONS``).
        alpha: negative slope of lrelu (default 0.2).
        gain: output scale; the activation's default (``sqrt(2)`` for relu/lrelu) when None.
        clamp: clamp the output to ``[-clamp, clamp]``; None disables it.
        impl: ``'auto'``, ``'ref'`` or ``'cuda'``.
    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    if impl not in ("auto", "ref", "cuda"):
        raise ValueError(f"impl must be 'auto', 'ref' or 'cuda', got {impl!r}")
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if _plugin.worth_a_kernel("bias_act", x, impl) and spec.cuda_code \
            and x.dtype in (torch.float32, torch.float16, torch.float64):
        plugin = _plugin.for_op("bias_act", x.device)
        if plugin is not None:
            return _BiasActCuda.apply(x, b, dim, spec.cuda_code, alpha, gain, clamp, plugin)
        if impl == "cuda":
            raise RuntimeError("bias_act: impl='cuda' requested but the CUDA ops could not be built or failed "
                               "their self-check (see the warning)")
    return bias_act_ref(x, b, dim, act, alpha, gain, clamp)


def bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """Pure-PyTorch reference of :func:`bias_act`; autograd gives every derivative order."""
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: bias of shape {tuple(b.shape)} does not fit dim {dim} of {tuple(x.shape)}")
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, act_code, alpha, gain, clamp, plugin):
        x = x.contiguous()
        bias = b.contiguous().to(x.dtype) if b is not None else x.new_empty([0])
        if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
            raise ValueError(f"bias_act: bias of shape {tuple(b.shape)} does not fit dim {dim} of {tuple(x.shape)}")
        y = plugin.bias_act(x, bias, dim, act_code, alpha, gain, clamp)
        ctx.save_for_backward(y)
        ctx.cfg = (dim, act_code, alpha, gain, clamp, b is not None, plugin)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        dim, act_code, alpha, gain, clamp, has_bias, plugin = ctx.cfg
        dx = plugin.bias_act_grad(dy.contiguous(), y, act_code, alpha, gain, clamp)
        db = None
        if has_bias and ctx.needs_input_grad[1]:
            db = dx.sum([i for i in range(dx.ndim) if i != dim])
        return dx, db, None, None, None, None, None, None


@selfcheck.register("bias_act")
def _self_check(plugin, device, dtype: torch.dtype, g: torch.Generator) -> float:
    """The kernel against the reference (computed in double) for every CUDA activation, with and
    without clamp, forward and input gradient."""
    worst = 0.0
    for act in ("linear", "relu", "lrelu"):
        for clamp in (None, 0.5):
            spec, alpha, gain, clamp_v = _resolve(act, None, None, clamp)
            x = torch.randn(2, 8, 9, 7, generator=g)
            b = torch.randn(8, generator=g)
            dy = torch.randn(2, 8, 9, 7, generator=g).to(device)
            xf = x.to(device, dtype).requires_grad_(True)
            bf = b.to(device, dtype)
            xr = x.to(device, dtype).double().requires_grad_(True)
            fast = _BiasActCuda.apply(xf, bf, 1, spec.cuda_code, alpha, gain, clamp_v, plugin)
            ref = bias_act_ref(xr, bf.double(), 1, act, None, None, clamp)
            worst = max(worst, selfcheck.forward_and_grad_error(fast, ref, [xf], [xr], dy))
    return worst
