"""Differentiable degradations, applied the same way to the target (once) and to every generated image.

Every function takes and returns float images ``[N, C, H, W]`` in the generator's range [-1, 1].
Degraded targets are written as 8-bit files (:func:`to_uint8`) and read back for the loss, which is
what users have. Masks are ``[N or 1, 1, H, W]`` floats with **1 = known pixel, 0 = missing**; mask
files (``<stem>_mask.png``) use the common inpainting convention **white = missing (the hole),
black = known**.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from recon.config import (
    BlurOp,
    DownsampleOp,
    GrayscaleOp,
    JpegOp,
    MaskOp,
    NoiseOp,
    Op,
    PoissonOp,
    check_op_fits,
    flatten_ops,
    observed_size,
    parse_op,
)
from recon.errors import DegradationError

LUMA = (0.299, 0.587, 0.114)
Draws = Callable[[str, tuple], torch.Tensor]    # (tag, per-image shape) -> [N or 1, *shape]


# ----------------------------------------------------------------------------------------------
# The operations

def gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    """Normalised 1D Gaussian taps ``[kernel_size]``."""
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def check_blur(kernel_size: int, sigma: float, size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise DegradationError(f"blur kernel size must be odd and positive, got {kernel_size}")
    if kernel_size >= size:
        raise DegradationError(f"blur kernel size {kernel_size} is not smaller than the {size} px image")
    if not sigma > 0:
        raise DegradationError(f"blur sigma must be > 0, got {sigma}")


def gaussian_blur(img: torch.Tensor, kernel_size: int = 21, sigma: float = 6.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding. ``[N, C, H, W]`` -> same shape."""
    check_blur(kernel_size, sigma, min(img.shape[-2:]))
    k = gaussian_kernel1d(kernel_size, sigma).to(img.device, img.dtype)
    c, p = img.shape[1], kernel_size // 2
    x = F.pad(img, [p, p, p, p], mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def gaussian_blur_per_image(img: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, reflect padding, each image with its own ``sigma`` ``[N]`` (a
    tensor: differentiable in it, what an estimated blur is). ``[N, C, H, W]`` -> same shape."""
    n, c = img.shape[:2]
    if kernel_size >= min(img.shape[-2:]):
        raise DegradationError(f"blur kernel size {kernel_size} is not smaller than the {min(img.shape[-2:])} px image")
    x = torch.arange(kernel_size, device=img.device, dtype=img.dtype) - (kernel_size - 1) / 2
    taps = torch.exp(-0.5 * (x[None] / sigma.to(img.dtype)[:, None]) ** 2)
    taps = (taps / taps.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)      # [N * C, K]
    p = kernel_size // 2
    y = F.pad(img, [p, p, p, p], mode="reflect").reshape(1, n * c, img.shape[2] + 2 * p, img.shape[3] + 2 * p)
    y = F.conv2d(y, taps[:, None, None, :], groups=n * c)
    y = F.conv2d(y, taps[:, None, :, None], groups=n * c)
    return y.reshape(n, c, *img.shape[2:])


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """Luminance 0.299 R + 0.587 G + 0.114 B, as three equal channels. ``[N, 3, H, W]``."""
    w = img.new_tensor(LUMA).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True).repeat(1, 3, 1, 1)


def downsample(img: torch.Tensor, factor: int, filter: str = "box") -> torch.Tensor:
    """Super-resolution operator: shrink by ``factor`` (``box``: area average, differentiable, what
    generated images get; or Pillow's antialiased ``bilinear``, ``bicubic``, ``lanczos``, for
    targets). ``[N, C, H, W]`` -> ``[N, C, H / factor, W / factor]``."""
    if factor < 2 or img.shape[-1] % factor or img.shape[-2] % factor:
        raise DegradationError(f"downsample factor must be >= 2 and divide the {img.shape[-1]} px size, "
                               f"got {factor}")
    if filter == "box":
        return F.avg_pool2d(img, factor)
    return _pil_resize(img, (img.shape[-1] // factor, img.shape[-2] // factor), filter)


def _pil_resize(img: torch.Tensor, size, filter: str) -> torch.Tensor:
    """Pillow's resampler on float images, channel by channel (mode F keeps full precision)."""
    from PIL import Image

    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "lanczos": Image.Resampling.LANCZOS}[filter]
    x = img.detach().float().cpu().numpy()
    out = np.stack([np.stack([np.asarray(Image.fromarray(ch).resize(size, resample)) for ch in im]) for im in x])
    return torch.from_numpy(out).to(img.device, img.dtype)


class SurrogateClamp(torch.autograd.Function):
    """``clamp(x, 0, 1)`` forward; backward the slope of ``sigmoid(2 (x - 0.5))``, so pixels pushed
    past the range still get a gradient (the robust method's photon-noise approximation)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(2 * (x - 0.5))
        return grad * 2 * s * (1 - s)


def poisson_target(img: torch.Tensor, photons: float, dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Photon noise and dropout as a camera makes them: ``Poisson(x * photons) / photons`` per
    channel, each pixel zeroed (all channels) with probability ``dropout``, clamped.
    ``[N, 3, H, W]`` in [-1, 1] -> the same; draws from ``generator`` (CPU)."""
    x = ((img.detach().cpu().double() + 1) / 2).clamp(0, 1)
    y = torch.poisson(x * photons, generator=generator) / photons
    keep = torch.rand(x.shape[0], 1, *x.shape[2:], generator=generator, dtype=torch.float64) >= dropout
    return ((y * keep).clamp(0, 1) * 2 - 1).to(img.device, img.dtype)


def poisson_approx(img: torch.Tensor, photons: float, dropout: float, normal: torch.Tensor,
                   uniform: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Differentiable stand-in for :func:`poisson_target`: with ``lam = x * photons``,
    ``(lam - 0.5 + sqrt(lam + 1e-3) * normal) / photons``, zeroed where ``uniform < dropout``, with a
    surrogate clamp before and after (the reference's approximation, its -0.5 offset included).
    ``img`` ``[N, 3, H, W]`` in [-1, 1]; ``normal`` ``[N, 3, H, W]`` ~ N(0, 1); ``uniform``
    ``[N, 1, H, W]`` ~ U(0, 1) -> the same shape as ``img``."""
    x = (img + 1) / 2
    if clamp:
        x = SurrogateClamp.apply(x)
    lam = x * photons
    y = (lam - 0.5 + torch.sqrt(lam + 1e-3) * normal) / photons
    y = y * (uniform >= dropout).to(y.dtype)
    if clamp:
        y = SurrogateClamp.apply(y)
    return y * 2 - 1


def normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal draws -> uniform ones on (0, 1)."""
    return 0.5 * (1 + torch.erf(x / 2 ** 0.5))


def jpeg_target(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image through Pillow's JPEG encoder (8-bit, 4:2:0). ``[N, 3, H, W]`` in [-1, 1]."""
    from recon.data.imageio import from_uint8, to_uint8

    from .jpeg import encode

    out = [from_uint8(encode(im, quality)) for im in to_uint8(img.detach().cpu())]
    return torch.cat(out).to(img.device, img.dtype)


def brush_mask(size: int, strokes: int, seed: int) -> torch.Tensor:
    """``[1, 1, size, size]`` soft mask (1 = known) of ``strokes`` random brush strokes, as the robust
    method's benchmark draws them, but seeded: on a 4x canvas, strokes about 8% of the image wide
    between points in the outer thirds, then two Gaussian 5-tap pyramid reductions."""
    from PIL import Image, ImageDraw

    rng = np.random.RandomState(seed)
    canvas = 4 * size
    width = max(int(0.08 * size), 1) * 4
    im = Image.new("F", (canvas, canvas), 0.0)
    draw = ImageDraw.Draw(im)

    def coord():
        third = canvas // 3
        return int(rng.randint(0, third + 1) if rng.rand() < 0.5 else rng.randint(2 * third, canvas + 1))
    for _ in range(strokes):
        a, b = (coord(), coord()), (coord(), coord())
        draw.line([a, b], fill=1.0, width=width)
        r = width // 2
        draw.ellipse([a[0] - r, a[1] - r, a[0] + r, a[1] + r], fill=1.0)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())[None, None]
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    for _ in range(2):   # pyrDown: 5x5 Gaussian, then every other pixel
        x = F.pad(x, [2, 2, 2, 2], mode="reflect")
        x = F.conv2d(F.conv2d(x, taps.view(1, 1, 1, 5)), taps.view(1, 1, 5, 1))[..., ::2, ::2]
    return (1 - x).clamp(0, 1)


def resized_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """A mask ``[N or 1, 1, h, w]`` resized for multiplying a smaller (or larger) image, as the
    robust method's reference does: ``F.interpolate(mode='bicubic', align_corners=False)`` without
    antialiasing. Bicubic overshoots: values a little outside [0, 1] near the mask's edges are kept."""
    return F.interpolate(mask, size=tuple(size), mode="bicubic", align_corners=False)


def apply_mask(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multiply by the mask in [0, 1] terms, as the reference does: known pixels (1) kept, missing
    ones (0) black. ``img`` in [-1, 1]; ``mask`` ``[N or 1, 1, h, w]``, bicubic-resized to the
    image when their sizes differ (a mask after a downsample: :func:`resized_mask`)."""
    if mask.shape[-1] != img.shape[-1]:
        mask = resized_mask(mask, img.shape[-2:])
    return (img + 1) * mask - 1


def centre_mask(size: int, fraction: float) -> torch.Tensor:
    """``[1, 1, size, size]`` mask with a centred square hole covering ``fraction`` of the side."""
    if not 0 < fraction < 1:
        raise DegradationError(f"mask fraction must be in (0, 1), got {fraction}")
    hole = int(round(size * fraction))
    m = torch.ones(1, 1, size, size)
    a = (size - hole) // 2
    m[..., a:a + hole, a:a + hole] = 0
    return m


def mask_from_file(path, size: int) -> torch.Tensor:
    """Read a mask PNG (white = missing), resized to ``size`` (nearest), as ``[1, 1, S, S]`` 1 = known."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L").resize((size, size), Image.Resampling.NEAREST))
    except OSError as exc:
        raise DegradationError(f"{path}: cannot read mask ({exc})") from exc
    return torch.from_numpy((arr < 128).astype(np.float32))[None, None]


def mask_from_color(img_uint8: np.ndarray, color: Sequence[int], tolerance: int = 8) -> torch.Tensor:
    """Mask of a photo whose hole is painted in a solid ``color``: ``[1, 1, H, W]``, 1 = known."""
    diff = np.abs(img_uint8.astype(np.int16) - np.asarray(color, np.int16)[None, None]).max(-1)
    return torch.from_numpy((diff > tolerance).astype(np.float32))[None, None]


def check_mask(mask: torch.Tensor, name: str = "mask") -> None:
    known = float(mask.mean())
    if known >= 1.0:
        raise DegradationError(f"{name} covers nothing: every pixel is known")
    if known <= 0.0:
        raise DegradationError(f"{name} covers everything: no pixel is known")


# ----------------------------------------------------------------------------------------------
# A configured chain of operations

def parse_ops(spec) -> List[Op]:
    """``'blur'``, ``{'type': 'blur', ...}``, an op object, or a list of those -> the flat list of
    typed ops (chains expanded, ``none`` dropped). The schema in :mod:`recon.config` holds the
    defaults and the checks; a bad op raises :class:`DegradationError`."""
    if spec is None:
        return []
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    try:
        return [o for i, item in enumerate(items)
                for o in flatten_ops(parse_op(item, str(i) if len(items) > 1 else ""))]
    except ValueError as exc:
        raise DegradationError(f"degradation {exc}") from None


@dataclass
class Degradation:
    """A chain of degradation ops, bound to an image size (and per-target masks).

    ``ops``: typed ops from :mod:`recon.config` (or anything :func:`parse_ops` takes): blur,
    grayscale, mask (per-target masks passed in ``masks``), downsample, noise (target only), jpeg,
    poisson (stochastic: fresh draws per call).
    """
    ops: List[Op]
    size: int
    masks: Optional[torch.Tensor] = None     # [N or 1, 1, H, W], 1 = known
    seed: int = 0

    def __post_init__(self):
        self.ops = parse_ops(self.ops)
        from recon.config import AutoOp
        if any(isinstance(op, AutoOp) or (isinstance(op, DownsampleOp) and op.factor == "auto") for op in self.ops):
            raise DegradationError("type auto and factor auto are resolved per face (the degrade stage records "
                                   "each face's ops) before a degradation is made")
        try:
            check_op_fits(self.ops, self.size)
        except ValueError as exc:
            raise DegradationError(f"degradation: {exc}") from None
        if self.has_mask:
            if self.masks is None:
                raise DegradationError("a mask degradation needs masks")
            for i in range(self.masks.shape[0]):
                check_mask(self.masks[i])
        if self.masks is not None and self.masks.shape[-1] != self.size:
            raise DegradationError(f"mask is {self.masks.shape[-1]} px, images are {self.size} px")

    def repeated(self, times: int) -> "Degradation":
        """The same degradation for a batch with every target repeated ``times`` times in a row
        (each target's mask with it)."""
        if self.masks is None or self.masks.shape[0] == 1:
            return self
        return Degradation(self.ops, self.size, masks=self.masks.repeat_interleave(times, 0), seed=self.seed)

    @property
    def mask_op(self) -> Optional[MaskOp]:
        return next((op for op in self.ops if isinstance(op, MaskOp)), None)

    @property
    def observed_size(self) -> int:
        """The side of the observation (a degraded image) in pixels: smaller after a downsample."""
        return observed_size(self.ops, self.size)

    def known(self, device) -> Optional[torch.Tensor]:
        """The masks at the observation's size, area-resized (what the robust loss's hole noise
        uses, as the reference does; the images are multiplied by the bicubic-resized mask), 1 =
        known; None without a mask."""
        if self.masks is None or not self.has_mask:
            return None
        m = self.masks.to(device, torch.float32)
        if m.shape[-1] != self.observed_size:
            m = F.interpolate(m, size=(self.observed_size, self.observed_size), mode="area")
        return m

    @property
    def has_mask(self) -> bool:
        return self.mask_op is not None

    @property
    def stochastic(self) -> bool:
        """Whether the operator on generated images draws fresh randomness (photon noise)."""
        return any(isinstance(op, PoissonOp) for op in self.ops)

    def _fixed_draws(self, tag: str, shape) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + 15485863 + sum(tag.encode()))
        return torch.randn(1, *shape, generator=g)

    @property
    def unknowns(self) -> List[Tuple[str, int, str, float, float]]:
        """What this degradation leaves to be estimated with each target's latent: ``(key, op
        index, parameter, low, high)`` per unknown (a blur's ``sigma: auto``)."""
        out = []
        blurs = [i for i, op in enumerate(self.ops) if isinstance(op, BlurOp) and op.sigma == "auto"]
        for i in blurs:
            op = self.ops[i]
            assert isinstance(op, BlurOp) and op.sigma_range is not None
            key = "sigma" if len(blurs) == 1 else f"sigma.{i}"
            out.append((key, i, "sigma", float(op.sigma_range[0]), float(op.sigma_range[1])))
        return out

    def _apply(self, img: torch.Tensor, target: bool, batch_index=None, draws: Optional[Draws] = None,
               params: Optional[Dict[int, Dict[str, torch.Tensor]]] = None) -> torch.Tensor:
        x = img
        for i, op in enumerate(self.ops):
            if isinstance(op, BlurOp) and op.sigma == "auto":
                if target or not params or i not in params:
                    raise DegradationError("a blur with sigma auto needs each target's estimate (it is found with "
                                           "the latent: recon.restore.estimate)")
                sigma = params[i]["sigma"]
                if batch_index is not None:
                    sigma = sigma[batch_index]
                x = gaussian_blur_per_image(x, op.kernel, sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma)
            elif isinstance(op, BlurOp):
                assert isinstance(op.sigma, float)          # auto is handled above
                x = gaussian_blur(x, op.kernel, op.sigma)
            elif isinstance(op, GrayscaleOp):
                x = grayscale(x)
            elif isinstance(op, DownsampleOp):
                assert isinstance(op.factor, int)           # auto is resolved per face before
                x = downsample(x, op.factor, op.filter if target else "box")
            elif isinstance(op, MaskOp) and self.masks is not None:     # checked when made
                m = self.masks.to(x.device, x.dtype)
                if batch_index is not None and m.shape[0] > 1:
                    m = m[batch_index]
                x = apply_mask(x, m)
            elif isinstance(op, NoiseOp) and target:
                # Noise is in the observation, not an operator on the estimate: target only.
                # One seeded draw per image, so a target gets the same noise alone or in a batch.
                g = torch.Generator().manual_seed(self.seed + 104729)
                n = torch.randn(x.shape[1:], generator=g).to(x.device, x.dtype)
                x = x + n * (op.sigma / 127.5)
            elif isinstance(op, JpegOp):
                from .jpeg import diff_jpeg
                x = jpeg_target(x, op.quality) if target else diff_jpeg(x, op.quality)
            elif isinstance(op, PoissonOp):
                if target:
                    x = poisson_target(x, op.photons, op.dropout, torch.Generator().manual_seed(self.seed + 104723))
                else:
                    draw = draws or self._fixed_draws
                    n = draw(f"{op.type}.normal", (3, *x.shape[2:])).to(x.device, x.dtype)
                    # uniform from a normal draw (its CDF): a random source has one kind of draw
                    u = normal_cdf(draw(f"{op.type}.dropout", (1, *x.shape[2:])).to(x.device, x.dtype))
                    x = poisson_approx(x, op.photons, op.dropout, n, u)
        return x

    def __call__(self, img: torch.Tensor, batch_index=None, draws: Optional[Draws] = None,
                 params: Optional[Dict[int, Dict[str, torch.Tensor]]] = None) -> torch.Tensor:
        """Degrade generated images (differentiable). ``draws(tag, shape)`` gives the fresh
        randomness of a stochastic operator, ``[N or 1, *shape]``, one row per image (a
        projector passes each target's own draws for the step); without it the draws are fixed
        by the seed. The observation model runs in float32 whatever the step's precision: it is
        cheap, and what the loss compares with the target (a bfloat16 filter moved the loss of a
        downsampled observation out of the precision gate's tolerance)."""
        with torch.autocast(img.device.type, enabled=False):
            return self._apply(img.float(), target=False, batch_index=batch_index, draws=draws, params=params)

    def target(self, img: torch.Tensor, batch_index=None) -> torch.Tensor:
        """Degrade clean targets once (adds observation noise where configured)."""
        return self._apply(img, target=True, batch_index=batch_index)
