"""2D convolution with optional FIR up/down-sampling, and StyleGAN2's modulated convolution.

Upsampling convolutions are transposed convolutions followed by the FIR filter, as in NVIDIA's
networks; the order of operations is kept so that results agree to float rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .upfirdn2d import _parse_padding, filter_size, upfirdn2d


def _conv2d(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """conv2d / conv_transpose2d; ``flip_weight=False`` flips the kernel (true convolution)."""
    kh, kw = w.shape[2:]
    if not flip_weight and (kw > 1 or kh > 1):
        w = w.flip([2, 3])
    op = F.conv_transpose2d if transpose else F.conv2d
    return op(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1,
                    down: int = 1, padding=0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False) -> torch.Tensor:
    """Convolve ``x [N, C_in, H, W]`` with ``w [C_out, C_in/groups, kh, kw]``, resampling with ``f``.

    ``up``/``down`` are integer factors; ``padding`` is applied at the input resolution.
    Returns ``[N, C_out, H*up/down, W*up/down]`` for the usual 'same' padding.
    """
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_resample expects 4D x and w, got {tuple(x.shape)} and {tuple(w.shape)}")
    if up < 1 or down < 1:
        raise ValueError(f"up and down must be >= 1, got {up}, {down}")
    out_channels, in_channels_per_group, kh, kw = w.shape
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernels: resample on the cheaper side of the convolution.
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    if up > 1:
        # Transposed convolution with stride `up`, then the FIR filter fixes the aliasing.
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv2d(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                    flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv2d(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    x = upfirdn2d(x, None, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
    x = _conv2d(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: Optional[torch.Tensor] = None, up: int = 1, down: int = 1, padding: int = 0,
                     resample_filter: Optional[torch.Tensor] = None, demodulate: bool = True,
                     flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2's modulated (and demodulated) convolution.

    Args:
        x: ``[N, C_in, H, W]``.
        weight: ``[C_out, C_in, kh, kw]``, already scaled as the caller wants, or
            ``[N, C_out, C_in, kh, kw]``: one per sample (always the fused path).
        styles: ``[N, C_in]`` per-sample input-channel scales, or ``[N, C_out, C_in]`` with one
            style vector per output filter (W++; always the fused path).
        noise: optional tensor broadcastable to the output, added after demodulation.
        fused_modconv: True = one grouped convolution with per-sample weights; False = scale the
            activations instead (same result up to rounding; the choice for training batches).
    Returns:
        ``[N, C_out, H*up/down, W*up/down]``.
    """
    batch_size = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape[-4:]
    per_sample = weight.ndim == 5
    if per_sample and weight.shape[0] != batch_size:
        raise ValueError(f"per-sample weights must be [{batch_size}, ...], got {tuple(weight.shape)}")
    per_filter = styles.shape == (batch_size, out_channels, in_channels)
    if styles.shape != (batch_size, in_channels) and not per_filter:
        raise ValueError(f"styles must be [{batch_size}, {in_channels}] or [{batch_size}, {out_channels}, "
                         f"{in_channels}], got {tuple(styles.shape)}")
    fused_modconv = fused_modconv or per_filter or per_sample

    # fp16 would overflow on the raw products: pre-normalise by the max, demodulation undoes it.
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / (in_channels * kh * kw) ** 0.5
                           / weight.norm(float("inf"), dim=[-3, -2, -1], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=-1, keepdim=True)

    w: Optional[torch.Tensor] = None
    dcoefs: Optional[torch.Tensor] = None
    if demodulate or fused_modconv:
        s = styles.reshape(batch_size, out_channels if per_filter else 1, in_channels, 1, 1)
        w = (weight if per_sample else weight.unsqueeze(0)) * s  # [N, O, I, kh, kw]
        if demodulate:
            dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
            if fused_modconv:
                w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if dcoefs is not None and noise is not None:
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1))
        elif dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    assert w is not None            # the fused path made the modulated weights above

    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                        groups=batch_size, flip_weight=flip_weight)
    x = x.reshape(batch_size, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x
