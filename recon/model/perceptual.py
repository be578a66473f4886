"""NVIDIA's VGG16 perceptual distance, called exactly as the official projector calls it.

Value ranges at each boundary (mixing them up is the classic bug):
  generator output ``[-1, 1]`` --(x + 1) * 127.5--> VGG input ``[0, 255]`` float
  --area resize to 256 when larger--> ``vgg16(img, resize_images=False, return_lpips=True)``
  --> feature vectors; distance = squared L2 between them (per image).
Files on disk are uint8 [0, 255]; :func:`recon.degrade.from_uint8` maps them to [-1, 1].

The masked variant for inpainting is the ``mask`` degradation: the missing pixels of both the
target and every generated image are replaced by the same fill before they reach the network, so
only known pixels drive the distance (see :class:`recon.degrade.Degradation`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from recon.errors import CheckpointError, MissingInputError, ProjectionError

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


MIN_VGG_SIDE = 32          # VGG16's five poolings need this many pixels


def to_vgg_range(img: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` in [-1, 1] -> [0, 255], area-resized to 256 px when larger, and bilinearly
    to 32 px when smaller (a small observation: VGG16 needs that many pixels)."""
    x = (img + 1) * (255 / 2)
    if x.shape[2] > 256:
        x = F.interpolate(x, size=(256, 256), mode="area")
    elif x.shape[2] < MIN_VGG_SIDE:
        x = F.interpolate(x, size=(MIN_VGG_SIDE, MIN_VGG_SIDE), mode="bilinear", align_corners=False)
    return x


def load_vgg16(path, device="cpu") -> torch.jit.ScriptModule:
    """Load NVIDIA's ``vgg16.pt`` (TorchScript: code and weights, no pickle of Python objects)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: VGG16 file not found (the download_weights stage fetches it)")
    try:
        vgg = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a TorchScript VGG16 file ({str(exc).splitlines()[0]})") from exc
    # The file may store its weights with requires_grad set; the loss never trains them, and
    # their gradients would cost a third of every backward pass. (A ScriptModule refuses
    # requires_grad_ as a whole, so per parameter.)
    for param in vgg.parameters():
        param.requires_grad_(False)
    return vgg


class VGGFeatures:
    """Feature function ``img [-1, 1] -> [N, D]`` around a TorchScript VGG16-LPIPS module."""

    def __init__(self, vgg: torch.jit.ScriptModule):
        self.vgg = vgg

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.vgg(to_vgg_range(img), resize_images=False, return_lpips=True)


class VGGLPIPS:
    """LPIPS distance with NVIDIA's ``vgg16.pt`` (it returns LPIPS-VGG features): the squared L2
    between feature vectors, per image, at the images' own size. Inputs ``[N, 3, H, W]`` in [0, 1]."""

    def __init__(self, vgg):
        self.vgg = vgg

    def features(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.vgg(x * 255, resize_images=False, return_lpips=True)
        except RuntimeError as exc:
            if x.shape[-1] >= 32:
                raise
            raise ProjectionError(f"VGG16 cannot take {x.shape[-1]} px images (its pooling needs more pixels): "
                                  f"raise robust.min_loss_res to {x.shape[-1]} or more") from exc

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.features(x) - self.features(y)).square().sum(dim=1)


class FixedTargetLPIPS:
    """:class:`VGGLPIPS` against targets that do not change between steps: each size's target
    features are computed once, not at every step (half the VGG passes, the same values)."""

    def __init__(self, lpips: VGGLPIPS):
        self.lpips = lpips
        self.cache: Dict[tuple, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        key = tuple(y.shape)
        if key not in self.cache:
            with torch.no_grad():
                self.cache[key] = self.lpips.features(y)
        return (self.lpips.features(x) - self.cache[key]).square().sum(dim=1)
