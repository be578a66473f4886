"""Robust unsupervised restoration (Poirier-Ginter & Lalonde, "Robust Unsupervised StyleGAN Image
Restoration", CVPR 2023), as its reference code does it.

Three phases, each a fixed number of steps of normalized gradient descent at its own learning
rate: W (one w from ``w_avg``), W+ (one w per layer, from the final W), W++ (one w per output
filter of every layer, from the final W+). The generator's own constant noise maps, never
optimized; no schedule, no regularizer. The loss compares the degraded generated image with the
degraded target at several scales (2x2 average pooling between them) with LPIPS, plus an L1 term
at the coarsest scale reached.

Images here are in [0, 1] (the reference code's range): ``(synthesis + 1) / 2``, unclamped.
W++ is stored as ``[B, num_ws, K, w_dim]`` with K the most filters of any layer (the reference
keeps 512 rows per layer; rows past a layer's filters never move, so the rows kept here follow
the same trajectory).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .config import RobustConfig
from .imageio import save_png, to_uint8, write_atomic

PHASES = ("W", "W+", "W++")
LPIPSFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]     # [B,3,h,w] x2 in [0,1] -> [B]


class VGGLPIPS:
    """LPIPS distance with NVIDIA's ``vgg16.pt`` (it returns LPIPS-VGG features): the squared L2
    between feature vectors, per image. Inputs in [0, 1]."""

    def __init__(self, vgg):
        self.vgg = vgg

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vgg(x * 255, resize_images=False, return_lpips=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.features(x) - self.features(y)).square().sum(dim=1)


def multiscale_loss(lpips: LPIPSFn, x: torch.Tensor, y: torch.Tensor, cfg: RobustConfig):
    """``(total [B], terms [B, levels + 1])``: ``weight * lpips(x, y)`` at each scale while the
    target is larger than ``min_loss_res``, 2x2 average pooling between scales, then
    ``l1_weight * mean|x - y|`` at the scale reached."""
    terms = []
    for weight in cfg.level_weights:
        if y.shape[-1] <= cfg.min_loss_res:
            break
        terms.append(weight * lpips(x, y))
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    terms.append(cfg.l1_weight * (x - y).abs().mean(dim=[1, 2, 3]))
    terms = torch.stack(terms, dim=1)
    return terms.sum(dim=1), terms


@torch.no_grad()
def ngd_step(param: torch.Tensor, lr: float) -> None:
    """Normalized gradient descent: every vector along the last dimension moves ``lr`` along its
    own gradient direction; a vector without gradient (0/0) stays."""
    g = torch.nan_to_num(param.grad / param.grad.norm(dim=-1, keepdim=True), nan=0.0, posinf=0.0, neginf=0.0)
    param.sub_(g * lr)


@dataclass
class RobustResult:
    latent: torch.Tensor                       # [num_ws, K, w_dim]: the final W++
    images: Dict[str, torch.Tensor]            # phase -> [3, R, R] in [0, 1] at the end of that phase
    history: List[dict]                        # one row per step: phase, step, loss, loss terms
    trajectory: Dict[str, List[torch.Tensor]] = field(default_factory=dict)   # phase -> latent after each step

    def save(self, out_dir, degraded: torch.Tensor) -> Path:
        """image.png (the final W++ image), image_W.png, image_W+.png (the end of each earlier
        phase), degraded.png (``degraded``: the final image degraded, in [-1, 1]), latents.npz
        (``wpp [num_ws, K, w_dim]``) and loss.csv (phase per step; ``dist`` is the whole loss:
        the method has no regularizers)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for phase, img in self.images.items():
            name = "image.png" if phase == PHASES[-1] else f"image_{phase}.png"
            save_png(out / name, to_uint8(img[None] * 2 - 1)[0])
        save_png(out / "degraded.png", to_uint8(degraded[None])[0])

        def write_npz(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, wpp=self.latent.numpy())
        write_atomic(out / "latents.npz", write_npz)
        terms = [k for k in self.history[0] if k.startswith("term")]

        def write_csv(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["step", "phase", "loss", "dist", "noise_reg", "latent_reg", *terms])
                w.writeheader()
                w.writerows(dict(h, dist=h["loss"], noise_reg=0.0, latent_reg=0.0) for h in self.history)
        write_atomic(out / "loss.csv", write_csv)
        return out


class RobustProjector:
    """Restores a batch of degraded targets. ``degrade``: generated image [0, 1] at the
    generator's resolution -> the target's space (differentiable)."""

    def __init__(self, G, lpips: LPIPSFn, cfg: RobustConfig = RobustConfig()):
        self.G, self.lpips, self.cfg = G, lpips, cfg
        self.device = next(G.parameters()).device

    def render(self, latent: torch.Tensor) -> torch.Tensor:
        """W ``[B, w_dim]``, W+ ``[B, num_ws, w_dim]`` or W++ ``[B, num_ws, K, w_dim]`` -> image in [0, 1]."""
        ws = latent[:, None].repeat(1, self.G.num_ws, 1) if latent.ndim == 2 else latent
        return (self.G.synthesis(ws, noise_mode="const", force_fp32=True) + 1) / 2

    def _next_phase(self, phase: str, latent: torch.Tensor) -> torch.Tensor:
        if phase == "W":
            return self.G.mapping.w_avg.detach().float().to(self.device)[None].repeat(latent.shape[0], 1)
        if phase == "W+":
            return latent[:, None].repeat(1, self.G.num_ws, 1)
        return latent[:, :, None].repeat(1, 1, self.G.synthesis.max_channels, 1)

    def project(self, target: torch.Tensor, degrade: Callable[[torch.Tensor], torch.Tensor],
                record: bool = False, on_step: Optional[Callable[[int], None]] = None) -> List[RobustResult]:
        """``target``: ``[B, 3, h, w]`` degraded targets in [0, 1]. Returns one result per target."""
        target = target.to(self.device, torch.float32)
        B = target.shape[0]
        latent = torch.zeros(B, self.G.w_dim, device=self.device)
        history: List[List[dict]] = [[] for _ in range(B)]
        images: List[Dict[str, torch.Tensor]] = [{} for _ in range(B)]
        trajectory: Dict[str, List[torch.Tensor]] = {}
        step = 0
        for phase, steps, lr in zip(PHASES, self.cfg.steps, self.cfg.learning_rates):
            latent = self._next_phase(phase, latent).detach().requires_grad_(True)
            trajectory[phase] = []
            for _ in range(steps):
                loss, terms = multiscale_loss(self.lpips, degrade(self.render(latent)), target, self.cfg)
                latent.grad = None
                loss.sum().backward()
                ngd_step(latent, lr)
                rows = torch.cat([loss[:, None], terms], dim=1).detach().cpu().tolist()
                for i, row in enumerate(rows):
                    history[i].append(dict(step=step, phase=phase, loss=row[0],
                                           **{f"term{k}": v for k, v in enumerate(row[1:])}))
                if record:
                    trajectory[phase].append(latent.detach().clone())
                step += 1
                if on_step is not None:
                    on_step(step)
            with torch.no_grad():
                image = self.render(latent)
            for i in range(B):
                images[i][phase] = image[i].cpu()
        return [RobustResult(latent[i].detach().cpu(), images[i], history[i],
                             {p: [t[i].cpu() for t in ts] for p, ts in trajectory.items()}) for i in range(B)]
