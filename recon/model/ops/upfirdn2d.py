"""Upsample, pad, FIR-filter, downsample: the resampling primitive of StyleGAN2.

``upfirdn2d(x, f, up, down, padding)`` inserts ``up-1`` zeros after every pixel, pads (negative
padding crops), convolves with the 2D FIR filter ``f`` (a true convolution unless ``flip_filter``),
then keeps every ``down``-th pixel. ``upsample2d``/``downsample2d`` wrap it with the padding that
keeps the image centred. One entry point with a pure-PyTorch reference and a CUDA kernel.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import _plugin, selfcheck

Pad = Union[int, Sequence[int]]


def setup_filter(f, device=torch.device("cpu"), normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1, separable: Optional[bool] = None) -> torch.Tensor:
    """Turn a list of taps into the filter tensor the ops take.

    A 1D filter shorter than 8 taps becomes its 2D outer product (``[1,3,3,1]`` -> ``[4, 4]``,
    summing to 1 when ``normalize``), as NVIDIA's networks store it in their ``resample_filter``
    buffers. Returns ``[fh, fw]`` or, when separable, ``[fw]``.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[np.newaxis]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"filter must be a non-empty 1D or 2D array, got shape {tuple(f.shape)}")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _pair(v, name):
    if isinstance(v, int):
        return v, v
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v


def _parse_padding(padding: Pad):
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding}")
    return tuple(padding)


def filter_size(f: Optional[torch.Tensor]):
    """(fw, fh) of a filter tensor; (1, 1) for None."""
    if f is None:
        return 1, 1
    return (int(f.shape[-1]), int(f.shape[0]))


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: Pad = 1, down: Pad = 1, padding: Pad = 0,
              flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Pad, upsample, filter and downsample a batch of images.

    Args:
        x: ``[N, C, H, W]``.
        f: ``[fh, fw]`` or separable ``[fw]`` float32 filter, or None for identity.
        up, down: int or ``[x, y]`` integer factors.
        padding: int, ``[x, y]`` or ``[x0, x1, y0, y1]``, applied after upsampling; negative crops.
        flip_filter: False = convolution (the filter is flipped for correlation), True = correlation.
        gain: overall scale; the filter is multiplied by ``gain ** (f.ndim / 2)``.
        impl: ``'auto'`` (the kernel for large CUDA tensors, see ``_plugin.KERNEL_MIN_NUMEL``),
            ``'ref'`` or ``'cuda'``.
    Returns:
        ``[N, C, (H*up + y0 + y1 - fh) // down + 1, (W*up + x0 + x1 - fw) // down + 1]``.
    """
    if impl not in ("auto", "ref", "cuda"):
        raise ValueError(f"impl must be 'auto', 'ref' or 'cuda', got {impl!r}")
    if _plugin.worth_a_kernel("upfirdn2d", x, impl) and x.dtype in (torch.float32, torch.float16, torch.float64):
        plugin = _plugin.for_op("upfirdn2d", x.device)
        if plugin is not None:
            return _UpFirDn2dCuda.apply(x, _as_2d_filter(f, x), _pair(up, "up"), _pair(down, "down"),
                                        _parse_padding(padding), flip_filter, gain, plugin)
        if impl == "cuda":
            raise RuntimeError("upfirdn2d: impl='cuda' requested but the CUDA ops could not be built or failed "
                               "their self-check (see the warning)")
    return upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain)


def _as_2d_filter(f, x):
    if f is None:
        return torch.ones([1, 1], dtype=torch.float32, device=x.device)
    return torch.outer(f, f) if f.ndim == 1 else f


def upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Pure-PyTorch reference of :func:`upfirdn2d` built from reshape, pad and grouped conv2d."""
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects [N, C, H, W], got shape {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    n, c, h, w = x.shape

    # Zero insertion: each pixel followed by up-1 zeros along each axis.
    x = x.reshape([n, c, h, 1, w, 1])
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape([n, c, h * upy, w * upx])

    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat([c, 1, 1, 1]), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].repeat([c, 1, 1, 1]), groups=c)   # along x
        x = F.conv2d(x, f[None, None, :, None].repeat([c, 1, 1, 1]), groups=c)  # along y
    return x[:, :, ::downy, ::downx]


def backward_params(in_hw, out_hw, f_wh, up, down, padding):
    """Parameters of the upfirdn2d that computes the input gradient of a given upfirdn2d.

    The adjoint swaps up and down, flips the filter, and moves the padding so that the taps line up.
    Returns ``(up, down, padding)`` for ``upfirdn2d(dy, f, ..., flip_filter=not flip_filter)``.
    """
    (ih, iw), (oh, ow), (fw, fh) = in_hw, out_hw, f_wh
    (upx, upy), (downx, downy) = up, down
    px0, _, py0, _ = padding
    pad = (fw - px0 - 1, iw * upx - ow * downx + px0 - upx + 1,
           fh - py0 - 1, ih * upy - oh * downy + py0 - upy + 1)
    return (downx, downy), (upx, upy), pad


class _UpFirDn2dCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter, gain, plugin):
        if x.ndim != 4:
            raise ValueError(f"upfirdn2d expects [N, C, H, W], got shape {tuple(x.shape)}")
        scaled = (f * (gain ** (f.ndim / 2))).to(device=x.device, dtype=torch.float32).contiguous()
        y = plugin.upfirdn2d(x.contiguous(), scaled, up[0], up[1], down[0], down[1], *padding, flip_filter)
        ctx.cfg = (f, tuple(x.shape[2:]), tuple(y.shape[2:]), up, down, padding, flip_filter, gain, plugin)
        return y

    @staticmethod
    def backward(ctx, dy):
        f, in_hw, out_hw, up, down, padding, flip_filter, gain, plugin = ctx.cfg
        bup, bdown, bpad = backward_params(in_hw, out_hw, filter_size(f), up, down, padding)
        # The gradient is itself an upfirdn2d, so it is differentiable again through this class.
        dx = _UpFirDn2dCuda.apply(dy, f, bup, bdown, bpad, not flip_filter, gain, plugin)
        return dx, None, None, None, None, None, None, None


def upsample2d(x, f, up: Pad = 2, padding: Pad = 0, flip_filter: bool = False, gain: float = 1,
               impl: str = "auto"):
    """Upsample ``[N, C, H, W]`` to ``[N, C, H*up, W*up]`` with the FIR filter ``f`` (centred)."""
    upx, upy = _pair(up, "up")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down: Pad = 2, padding: Pad = 0, flip_filter: bool = False, gain: float = 1,
                 impl: str = "auto"):
    """Downsample ``[N, C, H, W]`` to ``[N, C, H//down, W//down]`` after FIR filtering (centred)."""
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


@selfcheck.register("upfirdn2d")
def _self_check(plugin, device, dtype: torch.dtype, g: torch.Generator) -> float:
    """The kernel against the reference (computed in double) on the generator's cases: up-2 and
    down-2 with 4-tap filters, plain FIR, an odd padding with a flipped filter."""
    f4 = [1.0, 3.0, 3.0, 1.0]
    cases: List[Dict[str, Any]] = [dict(up=2, down=1, padding=[2, 1, 2, 1]), dict(up=1, down=2, padding=[1, 1, 1, 1]),
             dict(up=1, down=1, padding=[1, 2, 1, 2]), dict(up=2, down=1, padding=[1, 2, 2, 1], flip=True)]
    worst = 0.0
    for c in cases:
        f = setup_filter(f4, device)
        x = torch.randn(2, 5, 12, 10, generator=g)
        flip = c.get("flip", False)
        xf = x.to(device, dtype).requires_grad_(True)
        xr = x.to(device, dtype).double().requires_grad_(True)
        out_r = upfirdn2d_ref(xr, f.double(), c["up"], c["down"], c["padding"], flip, 1)
        dy = torch.randn(out_r.shape, generator=g).to(device)
        out_f = _UpFirDn2dCuda.apply(xf, f, _pair(c["up"], "up"), _pair(c["down"], "down"),
                                     _parse_padding(c["padding"]), flip, 1, plugin)
        if out_f.shape != out_r.shape:
            return float("inf")
        worst = max(worst, selfcheck.forward_and_grad_error(out_f, out_r, [xf], [xr], dy))
    return worst
