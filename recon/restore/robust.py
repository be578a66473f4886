"""Robust unsupervised restoration (Poirier-Ginter & Lalonde, "Robust Unsupervised StyleGAN Image
Restoration", CVPR 2023), as its reference code does it, as a restoration method.

Three phases, each a fixed number of steps of normalized gradient descent at its own learning
rate: W (one w from ``w_avg``), W+ (one w per layer, from the final W), W++ (one w per output
filter of every layer, from the final W+). The generator's own constant noise maps, never
optimized; no schedule, no regularizer. The loss compares the degraded generated image with the
degraded target at several scales (2x2 average pooling between them) with LPIPS, plus an L1 term
at the coarsest scale reached.

The method works in [0, 1] (the reference code's range: ``(synthesis + 1) / 2``, unclamped) and
converts at its boundary. W++ is kept as ``[B, num_ws, K, w_dim]`` with K the most filters of any
layer (the reference keeps 512 rows per layer; rows past a layer's filters never move, so the
rows kept here follow the same trajectory).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from recon.config import ProjectorConfig, RobustConfig
from recon.model.perceptual import VGGLPIPS, FixedTargetLPIPS

from .method import Method, Run

PHASES = ("W", "W+", "W++")
LATENT_KEYS = {"W": "w", "W+": "wp", "W++": "wpp"}     # phase -> its latent's name in latents.npz
LPIPSFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]     # [B,3,h,w] x2 in [0,1] -> [B]


def multiscale_loss(lpips: LPIPSFn, x: torch.Tensor, y: torch.Tensor, cfg: RobustConfig,
                    mask: Optional[torch.Tensor] = None, noise: Optional[Callable[[int, tuple], torch.Tensor]] = None):
    """``(total [B], terms [B, levels + 1])``: ``weight * lpips(x, y)`` at each scale while the
    target is larger than ``min_loss_res``, 2x2 average pooling between scales, then
    ``l1_weight * mean|x - y|`` at the scale reached.

    ``mask`` ``[B or 1, 1, h, w]`` (1 = known): at each LPIPS level the same fresh noise
    ``(n + 0.5) / 2`` is added to both images in the holes, so LPIPS is not biased toward the
    holes' flat fill; ``noise(level, shape)`` gives ``n`` ``[B, *shape]`` standard normal (each
    target's own draws for the step). The L1 term is not masked (as in the reference)."""
    terms: List[torch.Tensor] = []
    for level, weight in enumerate(cfg.level_weights):
        if y.shape[-1] <= cfg.min_loss_res:
            break
        if mask is not None and noise is not None:
            hole = 1 - mask
            n = (noise(level, tuple(x.shape[1:])).to(x.device, x.dtype) + 0.5) / 2
            terms.append(weight * lpips(x + n * hole, y + n * hole))
            mask = F.avg_pool2d(mask, 2)
        else:
            terms.append(weight * lpips(x, y))
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    terms.append(cfg.l1_weight * (x - y).abs().mean(dim=[1, 2, 3]))
    stacked = torch.stack(terms, dim=1)
    return stacked.sum(dim=1), stacked


@torch.no_grad()
def ngd_step(param: torch.Tensor, lr: float) -> None:
    """Normalized gradient descent: every vector along the last dimension moves ``lr`` along its
    own gradient direction; a vector without gradient (0/0) stays."""
    assert param.grad is not None
    g = torch.nan_to_num(param.grad / param.grad.norm(dim=-1, keepdim=True), nan=0.0, posinf=0.0, neginf=0.0)
    param.sub_(g * lr)


def phase_steps(num_steps: int, phases) -> List[int]:
    """``num_steps`` shared by the phases in proportion to their shares (the rounding remainder to
    the last): 450 with equal shares is the reference's 150 each."""
    total = sum(phases)
    steps = [int(num_steps * p / total) for p in phases]
    steps[-1] += num_steps - sum(steps)
    return steps


def init_phase(latent: torch.Tensor) -> int:
    """The first phase that can start from a latent of this shape (per target): 0 for W
    ``[w_dim]``, 1 for W+ ``[num_ws, w_dim]``, 2 for W++ ``[num_ws, K, w_dim]``."""
    return latent.ndim - 1


class RobustMethod(Method):
    """The robust method. ``perceptual``: an LPIPS distance ``(x, y) -> [B]`` on [0, 1] images."""
    name = "robust"
    init_keys = ("wpp", "wp", "ws", "w")

    @classmethod
    def perceptual_from_vgg(cls, vgg) -> LPIPSFn:
        return VGGLPIPS(vgg)

    @classmethod
    def steps(cls, cfg: ProjectorConfig) -> int:
        return cfg.num_steps

    @classmethod
    def budgeted(cls, cfg: ProjectorConfig, passes: int) -> ProjectorConfig:
        return cfg.model_copy(update=dict(num_steps=passes))

    @classmethod
    def settings(cls, cfg: ProjectorConfig) -> Dict[str, Any]:
        return dict(robust=cfg.robust.model_dump(), num_steps=cfg.num_steps, seed=cfg.seed, init=cfg.init)

    @classmethod
    def planned_phases(cls, cfg: ProjectorConfig, start: Optional[torch.Tensor] = None) -> List[Tuple[str, int]]:
        """``[(phase, steps)]`` of a run from ``start`` (one target's latent; None: w_avg): the phase
        the latent belongs to and the ones after it."""
        steps = phase_steps(cfg.num_steps, cfg.robust.phases)
        first = init_phase(start) if start is not None else 0
        return [(PHASES[i], steps[i]) for i in range(first, len(PHASES))]

    @classmethod
    def phase_images(cls, cfg: ProjectorConfig, start: Optional[torch.Tensor] = None) -> List[str]:
        return [p for p, _ in cls.planned_phases(cfg, start)[:-1]]

    @classmethod
    def last_phase(cls, cfg: ProjectorConfig, start: Optional[torch.Tensor] = None) -> str:
        phases = cls.planned_phases(cfg, start)
        return next((p for p, n in reversed(phases) if n > 0), "latent")

    def render(self, latent: torch.Tensor) -> torch.Tensor:
        """W ``[B, w_dim]``, W+ ``[B, num_ws, w_dim]`` or W++ ``[B, num_ws, K, w_dim]`` -> image in [0, 1]."""
        ws = latent[:, None].repeat(1, self.G.num_ws, 1) if latent.ndim == 2 else latent
        return (self.G.synthesis(ws, noise_mode="const", force_fp32=True) + 1) / 2

    def start(self, targets, degradation, rngs, init) -> "RobustRun":
        return RobustRun(self, targets, degradation, init)


class RobustRun(Run):
    """One batch through the planned phases; a phase begins from the previous one's last latent."""

    def __init__(self, method: RobustMethod, targets, degradation, init):
        self.m, self.cfg, self.degradation = method, method.cfg.robust, degradation
        steps = phase_steps(method.cfg.num_steps, self.cfg.phases)
        G, device = method.G, method.device
        self.batch = targets.shape[0]
        # holes are black in both images (the degradation multiplies by the mask); the loss adds
        # the same fresh noise to both there, at the observation's size
        self.mask = degradation.known(device) if degradation is not None else None
        self.target = (targets + 1) / 2
        first = 0
        if init is not None:
            init = init.to(device, torch.float32)
            shapes = {2: (self.batch, G.w_dim), 3: (self.batch, G.num_ws, G.w_dim),
                      4: (self.batch, G.num_ws, G.synthesis.max_channels, G.w_dim)}
            if shapes.get(init.ndim) != tuple(init.shape):
                raise ValueError(f"init latent must be W {list(shapes[2])}, W+ {list(shapes[3])} or W++ "
                                 f"{list(shapes[4])} for this generator, got {list(init.shape)}")
            first = init_phase(init[0])
        self.init = init
        self.plan = [(PHASES[i], steps[i], self.cfg.learning_rates[i]) for i in range(first, len(PHASES))]
        self.ends_at = [sum(s for _, s, _ in self.plan[:k + 1]) for k in range(len(self.plan))]
        self.step, self.total = 0, self.ends_at[-1]
        lpips = method.perceptual
        self.lpips = FixedTargetLPIPS(lpips) if self.mask is None and isinstance(lpips, VGGLPIPS) else lpips
        self.k = -1                                     # the phase in progress (index into plan)
        self._param: Optional[torch.Tensor] = None      # its latent, optimized
        self.ends: Dict[str, torch.Tensor] = {}         # phase -> its final latent [B, ...]
        self.images: Dict[str, torch.Tensor] = {}       # phase -> its final image [B, 3, R, R] in [0, 1]

    def _phase_start(self, phase: str, latent: Optional[torch.Tensor]) -> torch.Tensor:
        """A phase's first latent from the previous phase's last (None: ``w_avg``)."""
        G = self.m.G
        if latent is None:
            latent = G.mapping.w_avg.detach().float().to(self.m.device)[None].repeat(self.batch, 1)
        if phase in ("W+", "W++") and latent.ndim == 2:
            latent = latent[:, None].repeat(1, G.num_ws, 1)
        if phase == "W++" and latent.ndim == 3:
            latent = latent[:, :, None].repeat(1, 1, G.synthesis.max_channels, 1)
        return latent

    def _open_next(self) -> None:
        self.k += 1
        start = self._param.detach() if self._param is not None else self.init
        # a copy: the steps update it in place, and the start may be the caller's tensor (or w_avg itself)
        self._param = self._phase_start(self.plan[self.k][0], start).detach().clone().requires_grad_(True)

    @property
    def param(self) -> torch.Tensor:
        if self._param is None:
            raise RuntimeError("no phase has begun")
        return self._param

    def _close(self) -> None:
        phase = self.plan[self.k][0]
        with torch.no_grad():
            self.images[phase] = self.m.render(self.param)
        self.ends[phase] = self.param.detach()

    def _goto(self, step: int) -> None:
        """Before ``step``: close every phase that has ended and open the one ``step`` is in."""
        if self.k < 0:
            self._open_next()
        while step >= self.ends_at[self.k]:
            self._close()
            self._open_next()

    def advance(self, draws):
        self._goto(self.step)
        phase, _, lr = self.plan[self.k]
        with self.m.forward_precision():
            image = self.m.render(self.param)
            if self.degradation is not None:
                image = (self.degradation(image * 2 - 1, draws=draws) + 1) / 2
            noise = (lambda level, shape: draws(f"hole.{level}", shape)) if self.mask is not None else None
            loss, terms = multiscale_loss(self.lpips, image, self.target, self.cfg, self.mask, noise)
        loss, terms = loss.float(), terms.float()
        self.param.grad = None
        loss.sum().backward()
        ngd_step(self.param, lr)
        self.step += 1
        return phase, dict(loss=loss, dist=loss, **{f"term{k}": terms[:, k] for k in range(terms.shape[1])}), \
            dict(lr=lr)

    def latent(self) -> torch.Tensor:
        return self.param.detach()

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        return self.m.render(latent) * 2 - 1

    def state_dict(self) -> Dict[str, Any]:
        return dict(step=self.step, k=self.k, param=self.param.detach().cpu(),
                    ends={p: v.cpu() for p, v in self.ends.items()},
                    images={p: v.cpu() for p, v in self.images.items()})

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        device = self.m.device
        self.step, self.k = int(state["step"]), int(state["k"])
        self._param = state["param"].to(device).requires_grad_(True)
        self.ends = {p: v.to(device) for p, v in state["ends"].items()}
        self.images = {p: v.to(device) for p, v in state["images"].items()}

    def finish(self) -> List[Dict[str, Any]]:
        if self.k < 0:
            self._open_next()
        while True:                     # the phase in progress, and any left with no steps
            self._close()
            if self.k == len(self.plan) - 1:
                break
            self._open_next()
        last = self.plan[-1][0]
        image = self.images[last] * 2 - 1
        with torch.no_grad():
            degraded = self.degradation(image) if self.degradation is not None else image
        out = []
        for i in range(self.batch):
            latents = {LATENT_KEYS[p]: v[i].cpu() for p, v in self.ends.items()}
            out.append(dict(image=image[i].cpu(), degraded=degraded[i].cpu(), latents=latents,
                            phase_images={p: v[i].cpu() * 2 - 1 for p, v in self.images.items() if p != last}))
        return out
