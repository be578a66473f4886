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

from recon.config import RobustConfig
from recon.data.imageio import save_png, to_uint8, write_atomic

PHASES = ("W", "W+", "W++")
LPIPSFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]     # [B,3,h,w] x2 in [0,1] -> [B]


class VGGLPIPS:
    """LPIPS distance with NVIDIA's ``vgg16.pt`` (it returns LPIPS-VGG features): the squared L2
    between feature vectors, per image. Inputs in [0, 1]."""

    def __init__(self, vgg):
        self.vgg = vgg

    def features(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.vgg(x * 255, resize_images=False, return_lpips=True)
        except RuntimeError as exc:
            if x.shape[-1] >= 32:
                raise
            from recon.errors import ProjectionError
            raise ProjectionError(f"VGG16 cannot take {x.shape[-1]} px images (its pooling needs more pixels): "
                                  f"raise robust.min_loss_res to {x.shape[-1]} or more") from exc

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.features(x) - self.features(y)).square().sum(dim=1)


class FixedTargetLPIPS:
    """:class:`VGGLPIPS` against targets that do not change between steps (no hole noise): each
    scale's target features are computed once, not at every step (half the VGG passes of the
    reference code, same values)."""

    def __init__(self, lpips: VGGLPIPS):
        self.lpips, self.cache = lpips, {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        key = tuple(y.shape)
        if key not in self.cache:
            with torch.no_grad():
                self.cache[key] = self.lpips.features(y)
        return (self.lpips.features(x) - self.cache[key]).square().sum(dim=1)


def multiscale_loss(lpips: LPIPSFn, x: torch.Tensor, y: torch.Tensor, cfg: RobustConfig,
                    mask: Optional[torch.Tensor] = None, noise: Optional[Callable[[int, tuple], torch.Tensor]] = None):
    """``(total [B], terms [B, levels + 1])``: ``weight * lpips(x, y)`` at each scale while the
    target is larger than ``min_loss_res``, 2x2 average pooling between scales, then
    ``l1_weight * mean|x - y|`` at the scale reached.

    ``mask`` ``[B or 1, 1, h, w]`` (1 = known): at each LPIPS level the same fresh noise
    ``(n + 0.5) / 2`` is added to both images in the holes, so LPIPS is not biased toward the
    holes' flat fill; ``noise(level, shape)`` gives ``n`` ``[B, *shape]`` standard normal (each
    target's own draws for the step). The L1 term is not masked (as in the reference)."""
    terms = []
    for level, weight in enumerate(cfg.level_weights):
        if y.shape[-1] <= cfg.min_loss_res:
            break
        if mask is not None:
            hole = 1 - mask
            n = (noise(level, tuple(x.shape[1:])).to(x.device, x.dtype) + 0.5) / 2
            terms.append(weight * lpips(x + n * hole, y + n * hole))
            mask = F.avg_pool2d(mask, 2)
        else:
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


LATENT_KEYS = {"W": "w", "W+": "wp", "W++": "wpp"}     # phase -> its latent's name in latents.npz


@dataclass
class RobustResult:
    latent: torch.Tensor                       # [num_ws, K, w_dim]: the final W++
    images: Dict[str, torch.Tensor]            # phase -> [3, R, R] in [0, 1] at the end of that phase
    history: List[dict]                        # one row per step: phase, step, loss, loss terms
    trajectory: Dict[str, List[torch.Tensor]] = field(default_factory=dict)   # phase -> latent after each step
    latents: Dict[str, torch.Tensor] = field(default_factory=dict)   # phase -> its latent at the phase's end

    def save(self, out_dir, degraded: torch.Tensor) -> Path:
        """image.png (the final W++ image), image_W.png, image_W+.png (the end of each earlier
        phase that ran), degraded.png (``degraded``: the final image degraded, in [-1, 1]),
        latents.npz (``w [w_dim]``, ``wp [num_ws, w_dim]``, ``wpp [num_ws, K, w_dim]``: each phase's
        final latent) and loss.csv (phase per step; ``dist`` is the whole loss: the method has no
        regularizers)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for phase, img in self.images.items():
            name = "image.png" if phase == PHASES[-1] else f"image_{phase}.png"
            save_png(out / name, to_uint8(img[None] * 2 - 1)[0])
        save_png(out / "degraded.png", to_uint8(degraded[None])[0])
        arrays = {LATENT_KEYS[p]: v.numpy() for p, v in self.latents.items()}
        arrays["wpp"] = self.latent.numpy()

        def write_npz(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        write_atomic(out / "latents.npz", write_npz)
        terms = sorted({k for h in self.history for k in h if k.startswith("term")})

        def write_csv(tmp):
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["step", "phase", "loss", "dist", "noise_reg", "latent_reg", *terms])
                w.writeheader()
                w.writerows(dict(h, dist=h["loss"], noise_reg=0.0, latent_reg=0.0) for h in self.history)
        write_atomic(out / "loss.csv", write_csv)
        return out


def _flush_history(pending: list, history: List[List[dict]]) -> None:
    """Copy the loss rows kept on the device to each target's history in one transfer (not one
    host read per step)."""
    if not pending:
        return
    table = torch.stack([rows for _, _, rows in pending]).cpu().tolist()      # [steps, B, 1 + terms]
    for (step, phase, _), rows in zip(pending, table):
        for i, row in enumerate(rows):
            history[i].append(dict(step=step, phase=phase, loss=row[0],
                                   **{f"term{k}": v for k, v in enumerate(row[1:])}))
    pending.clear()


def init_phase(latent: torch.Tensor) -> int:
    """The first phase that can start from a latent of this shape (per target): 0 for W
    ``[w_dim]``, 1 for W+ ``[num_ws, w_dim]``, 2 for W++ ``[num_ws, K, w_dim]``."""
    return latent.ndim - 1


class RobustProjector:
    """Restores a batch of degraded targets. ``degrade``: generated image [0, 1] at the
    generator's resolution -> the target's space (differentiable); it takes ``draws`` (the
    step's fresh randomness, :func:`recon.projector.step_draws`) when the degradation is
    stochastic."""

    def __init__(self, G, lpips: LPIPSFn, cfg: RobustConfig = RobustConfig()):
        self.G, self.lpips, self.cfg = G, lpips, cfg
        self.device = next(G.parameters()).device

    def render(self, latent: torch.Tensor) -> torch.Tensor:
        """W ``[B, w_dim]``, W+ ``[B, num_ws, w_dim]`` or W++ ``[B, num_ws, K, w_dim]`` -> image in [0, 1]."""
        ws = latent[:, None].repeat(1, self.G.num_ws, 1) if latent.ndim == 2 else latent
        return (self.G.synthesis(ws, noise_mode="const", force_fp32=True) + 1) / 2

    def _phase_start(self, phase: str, latent: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """A phase's first latent from the previous phase's last (None before W: ``w_avg``)."""
        if latent is None:
            return self.G.mapping.w_avg.detach().float().to(self.device)[None].repeat(batch, 1)
        if phase == "W+" and latent.ndim == 2:
            return latent[:, None].repeat(1, self.G.num_ws, 1)
        if phase == "W++" and latent.ndim == 3:
            return latent[:, :, None].repeat(1, 1, self.G.synthesis.max_channels, 1)
        return latent

    def _check_init(self, init: torch.Tensor, batch: int) -> None:
        G = self.G
        shapes = {2: (batch, G.w_dim), 3: (batch, G.num_ws, G.w_dim),
                  4: (batch, G.num_ws, G.synthesis.max_channels, G.w_dim)}
        if shapes.get(init.ndim) != tuple(init.shape):
            raise ValueError(f"init latent must be W {list(shapes[2])}, W+ {list(shapes[3])} or W++ "
                             f"{list(shapes[4])} for this generator, got {list(init.shape)}")

    def project(self, target: torch.Tensor, degrade: Callable[..., torch.Tensor], record: bool = False,
                on_step: Optional[Callable[[int], None]] = None, mask: Optional[torch.Tensor] = None,
                rngs=None, names: Optional[List[str]] = None, init: Optional[torch.Tensor] = None,
                snapshot_path=None, snapshot_every: int = 0) -> List[RobustResult]:
        """``target``: ``[B, 3, h, w]`` degraded targets in [0, 1]. Returns one result per target.

        ``mask`` ``[B or 1, 1, h, w]`` (1 = known): holes get the loss's fresh noise. ``rngs``: one
        random source per target (:class:`recon.projector.TorchRandom`; default seed 0), the only
        source of the step's draws. ``init``: a starting latent per target (W, W+ or W++ shaped);
        the phases before the one it belongs to are skipped. ``snapshot_path``: the state is
        written there every ``snapshot_every`` steps and a run resumes from it."""
        from .official import TorchRandom, step_draws

        target = target.to(self.device, torch.float32)
        B = target.shape[0]
        names = list(names) if names is not None else [f"target{i}" for i in range(B)]
        rngs = list(rngs) if rngs is not None else [TorchRandom(0) for _ in range(B)]
        if mask is not None:
            mask = mask.to(self.device, torch.float32)
        first = 0
        if init is not None:
            init = init.to(self.device, torch.float32)
            self._check_init(init, B)
            first = init_phase(init[0])
        plan = [(i, PHASES[i], self.cfg.steps[i], self.cfg.learning_rates[i]) for i in range(first, len(PHASES))]
        lpips = FixedTargetLPIPS(self.lpips) if mask is None and isinstance(self.lpips, VGGLPIPS) else self.lpips
        total = sum(steps for _, _, steps, _ in plan)

        history: List[List[dict]] = [[] for _ in range(B)]
        images: List[Dict[str, torch.Tensor]] = [{} for _ in range(B)]
        ends: Dict[str, torch.Tensor] = {}
        trajectory: Dict[str, List[torch.Tensor]] = {}
        pending: list = []          # loss rows kept on the device until a phase ends or a snapshot
        latent, step, resume_phase = init, 0, first
        snapshot_path = Path(snapshot_path) if snapshot_path else None
        if snapshot_path is not None and snapshot_path.is_file():
            snap = torch.load(snapshot_path, map_location="cpu", weights_only=True)
            if snap.get("names") == names and snap.get("total") == total:
                latent, step, history = snap["latent"].to(self.device), int(snap["step"]), snap["history"]
                resume_phase = int(snap["phase"])
                ends = {p: v.to(self.device) for p, v in snap["ends"].items()}
                for i, imgs in enumerate(snap["images"]):
                    images[i] = dict(imgs)
        for index, phase, steps, lr in plan:
            if index < resume_phase:
                continue
            phase_first = sum(s for i, _, s, _ in plan if i < index)
            if step == phase_first:
                latent = self._phase_start(phase, latent if (index > first or init is not None) else None, B)
            latent = latent.detach().requires_grad_(True)
            trajectory[phase] = []
            while step < phase_first + steps:
                draws = step_draws(rngs, step)
                image = degrade(self.render(latent), draws=draws)
                noise = (lambda level, shape, draws=draws: draws(f"hole.{level}", shape)) if mask is not None else None
                loss, terms = multiscale_loss(lpips, image, target, self.cfg, mask, noise)
                latent.grad = None
                loss.sum().backward()
                ngd_step(latent, lr)
                pending.append((step, phase, torch.cat([loss[:, None], terms], dim=1).detach()))
                if record:
                    trajectory[phase].append(latent.detach().clone())
                step += 1
                if on_step is not None:
                    on_step(step)
                if snapshot_path is not None and snapshot_every and step % snapshot_every == 0 and step < total:
                    _flush_history(pending, history)
                    self._snapshot(snapshot_path, names, total, index, step, latent, ends, images, history)
            _flush_history(pending, history)
            with torch.no_grad():
                image = self.render(latent)
            for i in range(B):
                images[i][phase] = image[i].cpu()
            ends[phase] = latent.detach()
        return [RobustResult(latent[i].detach().cpu(), images[i], history[i],
                             {p: [t[i].cpu() for t in ts] for p, ts in trajectory.items()},
                             {p: v[i].cpu() for p, v in ends.items()}) for i in range(B)]

    @staticmethod
    def _snapshot(path: Path, names, total, phase_index, step, latent, ends, images, history) -> None:
        state = dict(names=names, total=total, phase=phase_index, step=step, latent=latent.detach().cpu(),
                     ends={p: v.cpu() for p, v in ends.items()}, images=images, history=history)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: torch.save(state, tmp))


def restore_degraded(projector: RobustProjector, targets: torch.Tensor, d, **kwargs) -> List[RobustResult]:
    """The robust method on targets degraded by a pipeline :class:`recon.degrade.Degradation`
    ``d`` (which works in [-1, 1]; the method in [0, 1]). Holes take ``d``'s fixed fill in both
    images and the loss adds its fresh noise there. ``targets`` ``[B, 3, R, R]`` in [-1, 1];
    ``kwargs`` go to :meth:`RobustProjector.project` (rngs, names, init, snapshots, on_step)."""
    from .degrade import fill_missing

    if d.has_mask:
        targets = fill_missing(targets, d.masks, d.fill("cpu"))

    def degrade(x01, draws=None):
        return (d(x01 * 2 - 1, draws=draws) + 1) / 2
    return projector.project((targets + 1) / 2, degrade, mask=d.masks if d.has_mask else None, **kwargs)
