"""JPEG compression: Pillow's encoder for targets, and a differentiable approximation for the
generated image (the robust method's DiffJPEG, written from its description).

The approximation follows baseline JPEG with 4:2:0 chroma: RGB -> YCbCr (JFIF), 2x2 average of
the chroma, 8x8 blocks shifted by -128, orthonormal DCT, division by the quantization table and
rounding, then back. The tables are the ones Pillow writes for that quality, read from an
encoded probe, so both paths quantize alike. Rounding is exact going forward; its gradient is
that of ``lerp(x, round(x) + (x - round(x))^3, 0.8)``, i.e. ``0.2 + 2.4 (x - round(x))^2``.
The output is not clamped (as in the reference); libjpeg's integer DCT and its smooth chroma
upsampling are left as approximation error.

Pillow returns its tables in natural row-major order (row = vertical frequency), and the
coefficient ``[v, u]`` is divided by ``table[v, u]``. The reference code transposes the table
(a habit inherited from DiffJPEG's hard-coded tables); on a real encoder's output the natural
order is the closer approximation (tested), so that is what is used here.
"""
from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                              [-0.168736, -0.331264, 0.5],
                              [0.5, -0.418688, -0.081312]], dtype=torch.float64)
_YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.402],
                              [1.0, -0.344136, -0.714136],
                              [1.0, 1.772, 0.0]], dtype=torch.float64)
_CHROMA_SHIFT = torch.tensor([0.0, 128.0, 128.0], dtype=torch.float64)


def encode(img_uint8: np.ndarray, quality: int) -> np.ndarray:
    """``[H, W, 3]`` uint8 through Pillow's JPEG encoder and decoder (4:2:0) -> ``[H, W, 3]`` uint8."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img_uint8).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()


@lru_cache(maxsize=None)
def quant_tables(quality: int) -> torch.Tensor:
    """``[2, 8, 8]`` float64: the luma and chroma tables Pillow uses at ``quality``, [v, u]."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 64, 32)).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as im:
        tables = im.quantization  # type: ignore[attr-defined]   # JPEG images have their tables
    return torch.tensor([list(tables[0]), list(tables[1])], dtype=torch.float64).view(2, 8, 8)


@lru_cache(maxsize=None)
def _dct_matrix() -> torch.Tensor:
    """``C[u, x] = a(u) / 2 * cos((2x + 1) u pi / 16)``, a(0) = 1/sqrt(2): orthonormal, so
    ``C f C^T`` is JPEG's forward DCT of an 8x8 block f and ``C^T D C`` its inverse."""
    u = torch.arange(8, dtype=torch.float64)[:, None]
    x = torch.arange(8, dtype=torch.float64)[None]
    c = torch.cos((2 * x + 1) * u * math.pi / 16) / 2
    c[0] /= math.sqrt(2)
    return c


class SurrogateRound(torch.autograd.Function):
    """``round(x)`` forward; backward ``0.2 + 2.4 (x - round(x))^2`` (the reference's k = 0.8)."""

    @staticmethod
    def forward(ctx, x):
        r = torch.round(x)
        ctx.save_for_backward(x - r)
        return r

    @staticmethod
    def backward(ctx, grad):
        (frac,) = ctx.saved_tensors
        return grad * (0.2 + 2.4 * frac.square())


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` -> ``[N, H/8, W/8, 8, 8]``."""
    n, h, w = x.shape
    return x.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(b: torch.Tensor) -> torch.Tensor:
    n, bh, bw = b.shape[:3]
    return b.permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)


def _codec(plane: torch.Tensor, table: torch.Tensor, rounding) -> torch.Tensor:
    """One plane ``[N, H, W]`` in 0-255 through DCT, quantization, dequantization and IDCT."""
    c = _dct_matrix().to(plane.device, plane.dtype)
    q = table.to(plane.device, plane.dtype)
    coeff = c @ (_blocks(plane) - 128) @ c.T
    coeff = rounding(coeff / q) * q
    return _unblocks(c.T @ coeff @ c) + 128


def diff_jpeg(img: torch.Tensor, quality: int, rounding=SurrogateRound.apply) -> torch.Tensor:
    """Differentiable JPEG at ``quality``. ``[N, 3, H, W]`` in [-1, 1], H and W multiples of 16
    -> the same shape, unclamped. ``rounding`` replaces the quantizer's rounding (tests pass the
    identity to check the transform alone)."""
    n, _, h, w = img.shape
    if h % 16 or w % 16:
        raise ValueError(f"jpeg needs sides that are multiples of 16, got {h}x{w}")
    dt = img.dtype
    rgb = (img + 1) * 127.5
    ycc = torch.einsum("ij,njhw->nihw", _RGB_TO_YCBCR.to(img.device, dt), rgb) + \
        _CHROMA_SHIFT.to(img.device, dt).view(1, 3, 1, 1)
    tables = quant_tables(int(quality))
    y = _codec(ycc[:, 0], tables[0], rounding)
    chroma = F.avg_pool2d(ycc[:, 1:], 2)
    cb = _codec(chroma[:, 0], tables[1], rounding)
    cr = _codec(chroma[:, 1], tables[1], rounding)
    chroma = F.interpolate(torch.stack([cb, cr], 1), scale_factor=2, mode="nearest")
    ycc = torch.cat([y[:, None], chroma], 1) - _CHROMA_SHIFT.to(img.device, dt).view(1, 3, 1, 1)
    rgb = torch.einsum("ij,njhw->nihw", _YCBCR_TO_RGB.to(img.device, dt), ycc)
    return rgb / 127.5 - 1
