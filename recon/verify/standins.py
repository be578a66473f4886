"""What the fixtures' recorded runs used in place of weights that cannot be shipped: the feature
function of the official projector's run (``stylegan2-tiny-a/projector.safetensors``), the LPIPS
stand-in and the degradation of the robust reference run (``robust-tiny-a``). Replaying a run with
these and its recorded draws must give its numbers (``tests/fixtures/*/README.md``)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def projector_features(img: torch.Tensor) -> torch.Tensor:
    """The official run's feature function on ``[N, 3, R, R]`` images in [-1, 1] (it maps them to
    [0, 255] as VGG16's input is): ``tanh(avg_pool2d(x / 127.5 - 1, 2))``, flattened -> ``[N, D]``."""
    x = (img + 1) * (255 / 2)
    return torch.tanh(F.avg_pool2d(x / 127.5 - 1, 2)).flatten(1)


def robust_lpips(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The robust run's weight-free LPIPS stand-in on ``[N, 3, H, W]`` images in [0, 1]:
    ``mean((f(2x - 1) - f(2y - 1))^2)`` with ``f = tanh(avg_pool2d(., 2))`` -> ``[N]``."""
    def f(z):
        return torch.tanh(F.avg_pool2d(z * 2 - 1, 2))
    return (f(x) - f(y)).square().mean(dim=[1, 2, 3])


class Pool:
    """The robust run's degradation, 2x2 average pooling of the 32 px image to the 16 px
    observation, as the restoration contract takes a degradation; with ``masks`` (1 = known, at
    the observation's size) the holes are black, as the reference's masking makes them."""
    size, observed_size, stochastic = 32, 16, False

    def __init__(self, masks: Optional[torch.Tensor] = None):
        self.masks = masks

    def known(self, device):
        return None if self.masks is None else self.masks.to(device)

    def __call__(self, x: torch.Tensor, draws=None) -> torch.Tensor:
        x = F.avg_pool2d(x, 2)
        return x if self.masks is None else (x + 1) * self.masks - 1
