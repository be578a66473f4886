"""A small TorchScript feature network with the call signature of NVIDIA's vgg16.pt:
``net(img [N, 3, H, W] in [0, 255], resize_images: bool, return_lpips: bool) -> [N, D]``.
Random convolutions, unit-normalised per tap like LPIPS, plus the raw pixels."""
from typing import List

import torch
import torch.nn.functional as F


class TinyLPIPS(torch.nn.Module):
    def __init__(self, seed: int = 0, width: int = 16, pixel_weight: float = 30.0):
        super().__init__()
        self.pixel_weight = pixel_weight
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv2d(3, width, 3, padding=1)
        self.c2 = torch.nn.Conv2d(width, 2 * width, 3, padding=1)
        with torch.no_grad():
            for c in (self.c1, self.c2):
                c.weight.copy_(torch.randn(c.weight.shape, generator=g) * (2.0 / c.weight[0].numel()) ** 0.5)
                c.bias.zero_()

    def forward(self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        x = img / 127.5 - 1
        if resize_images:
            x = F.interpolate(x, size=(64, 64), mode="area")
        h1 = F.relu(self.c1(x))
        h2 = F.relu(self.c2(F.avg_pool2d(h1, 2)))
        taps: List[torch.Tensor] = [h1, h2]
        # The pixels themselves, not normalised and weighted up: a test loss that pins exact values
        # (random features alone leave a tiny random generator's inversion far from its target).
        out: List[torch.Tensor] = [(x * self.pixel_weight).flatten(1)]
        for t in taps:
            n = t / (t.square().sum(1, keepdim=True).sqrt() + 1e-10)
            out.append((n / float(t.shape[2] * t.shape[3]) ** 0.5).flatten(1))
        return torch.cat(out, 1)


def write_tiny_vgg(path, seed: int = 0) -> None:
    torch.jit.script(TinyLPIPS(seed).eval()).save(str(path))
