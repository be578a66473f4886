"""NVIDIA's official projector (stylegan2-ada-pytorch ``projector.py``) as a restoration method.

w_avg and the RMS w distance from ``w_avg_samples`` mapped z's, Adam with a learning-rate ramp-up
and cosine ramp-down, decaying Gaussian noise on w, and optimized noise maps with their
autocorrelation regularization and per-step re-normalization. Beyond it:

* a batch of targets in one forward pass, each with its own latents, noise maps and random
  stream (a target gives the same result alone or in any batch);
* the reference study's latent-distance regularization ``latent_dist_reg_weight * |w - w_avg|^2``;
* latent spaces ``w``, ``w+`` and ``w->w+`` (W first, then one w per layer, in the spirit of
  Poirier-Ginter & Lalonde, CVPR 2023);
* any differentiable degradation applied to every generated image before the loss;
* the saved image is the one that was optimized (w and the optimized noise maps), unlike the
  official tool, which re-renders with the network's own noise buffers.

Value ranges: targets and generated images are ``[N, 3, R, R]`` in [-1, 1]; the feature function
maps them to [0, 255] itself (:class:`recon.model.perceptual.VGGFeatures`).
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from recon.config import ProjectorConfig
from recon.model.perceptual import VGGFeatures

from .method import Method, Run

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
W_NOISE_CHUNK = 256      # steps of w-noise drawn and moved to the device at a time


# ----------------------------------------------------------------------------------------------
# Pieces of the official algorithm

# Per generator object (weakly held, so a freed generator's entry cannot be reused by another).
_W_STATS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@torch.no_grad()
def w_stats(G, samples: int = 10000, seed: int = 123, batch: int = 2000):
    """``(w_avg [1, 1, w_dim] float32, w_std float)`` over mapped z from ``RandomState(seed)``.

    ``w_std`` is the RMS distance ``sqrt(sum((w - w_avg)^2) / samples)`` over all elements."""
    if G.c_dim:
        raise ValueError("the projector needs an unconditional generator (c_dim = 0)")
    cache = _W_STATS_CACHE.setdefault(G, {})
    key = (samples, seed, str(next(G.parameters()).device))
    if key not in cache:
        device = next(G.parameters()).device
        z = np.random.RandomState(seed).randn(samples, G.z_dim)
        ws = [G.mapping(torch.from_numpy(z[i:i + batch]).to(device), None)[:, :1, :].cpu()
              for i in range(0, samples, batch)]
        w = torch.cat(ws).numpy().astype(np.float32)
        w_avg = np.mean(w, axis=0, keepdims=True)
        w_std = float((np.sum((w - w_avg) ** 2) / samples) ** 0.5)
        cache[key] = (torch.from_numpy(w_avg), w_std)
    w_avg, w_std = cache[key]
    return w_avg.clone(), w_std


def learning_rate(step: int, cfg: ProjectorConfig) -> float:
    t = step / cfg.num_steps
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown_length)
    ramp = 0.5 - 0.5 * np.cos(ramp * np.pi)
    ramp = ramp * min(1.0, t / cfg.lr_rampup_length)
    return float(cfg.initial_learning_rate * ramp)


def w_noise_scale(step: int, w_std: float, cfg: ProjectorConfig) -> float:
    t = step / cfg.num_steps
    return float(w_std * cfg.initial_noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp_length) ** 2)


def noise_regularization(noise: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-target sum over maps and scales of squared one-pixel autocorrelations: ``[B]``."""
    reg = torch.zeros(())
    for n in noise.values():
        while True:
            reg = reg + (n * torch.roll(n, shifts=1, dims=3)).mean(dim=[1, 2, 3]) ** 2
            reg = reg + (n * torch.roll(n, shifts=1, dims=2)).mean(dim=[1, 2, 3]) ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, kernel_size=2)
    return reg


@torch.no_grad()
def renormalize_noise(noise: Dict[str, torch.Tensor]) -> None:
    for n in noise.values():
        n -= n.mean(dim=[1, 2, 3], keepdim=True)
        n *= n.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()


# ----------------------------------------------------------------------------------------------
# The method

class OfficialMethod(Method):
    """NVIDIA's projector. ``perceptual``: ``img [-1, 1] -> [N, D]`` features (the distance is
    their squared L2); ``compile``: run the step through ``torch.compile`` (:mod:`recon.restore.compiled`;
    ``"auto"``: when the eager steps timed and the steps ``planned()`` say it pays, ``say`` telling
    which)."""
    name = "official"
    init_keys = ("wp", "ws", "w")
    compilable = True

    def __init__(self, G, perceptual: FeatureFn, cfg: ProjectorConfig = ProjectorConfig(),
                 compile: Union[bool, str] = False, planned: Optional[Callable[[], int]] = None,
                 say: Callable[[str], None] = lambda s: None):
        super().__init__(G, perceptual, cfg)
        self.w_avg, self.w_std = w_stats(G, cfg.w_avg_samples, cfg.w_avg_seed)
        self.w_avg = self.w_avg.to(self.device)
        self.layers = G.synthesis.noise_layers()
        self.terms = self.loss_terms
        if compile == "auto":           # decided by the run's own eager steps (recon.restore.compiled)
            from .compiled import AutoCompile, step_key
            self.terms = AutoCompile(self.loss_terms, self.device, planned or (lambda: cfg.num_steps),
                                     lambda w_opt, *a: step_key(G, self.precision, w_opt.shape[0], self.device),
                                     G.img_resolution, say)
        elif compile:
            from .compiled import CompiledOrEager
            self.terms = CompiledOrEager(self.loss_terms, self.device)
        self._weights_key: Optional[tuple] = None

    @classmethod
    def perceptual_from_vgg(cls, vgg) -> FeatureFn:
        return VGGFeatures(vgg)

    @classmethod
    def steps(cls, cfg: ProjectorConfig) -> int:
        return cfg.num_steps

    @classmethod
    def budgeted(cls, cfg: ProjectorConfig, passes: int) -> ProjectorConfig:
        return cfg.model_copy(update=dict(num_steps=passes))

    @classmethod
    def settings(cls, cfg: ProjectorConfig) -> Dict[str, Any]:
        return cfg.model_dump(exclude={"snapshot_every", "robust", "method"})

    @classmethod
    def start_problem(cls, cfg: ProjectorConfig, latent: torch.Tensor) -> Optional[str]:
        if latent.ndim > 2:
            return "holds no W or W+ latent the official projector can start from"
        if latent.ndim == 2 and cfg.latent_space != "w+":
            return (f"holds a W+ latent (one w per layer, rows differ), but latent_space is {cfg.latent_space}, "
                    "which starts from one w; use latent_space: w+")
        return None

    @classmethod
    def last_phase(cls, cfg: ProjectorConfig, start: Optional[torch.Tensor] = None) -> str:
        switches = cfg.latent_space == "w->w+" and round(cfg.w_plus_switch * cfg.num_steps) < cfg.num_steps
        return "W+" if cfg.latent_space == "w+" or switches else "W"

    def space_at(self, step: int) -> str:
        if self.cfg.latent_space == "w->w+":
            return "w" if step < round(self.cfg.w_plus_switch * self.cfg.num_steps) else "w+"
        return self.cfg.latent_space

    def synthesize(self, w: torch.Tensor, noise: Dict[str, torch.Tensor]) -> torch.Tensor:
        # On CPU the activation-scaling path (fused_modconv=False) is ~20% faster than one grouped
        # convolution and equal up to rounding; on CUDA keep NVIDIA's choice.
        fused = None if self.device.type == "cuda" else False
        return self.G.synthesis(self.expand(w), noise_mode="const", noise_inputs=noise, fused_modconv=fused)

    def expand(self, w: torch.Tensor) -> torch.Tensor:
        """``[B, 1 or num_ws, w_dim]`` -> ``[B, num_ws, w_dim]``."""
        return w.repeat(1, self.G.num_ws, 1) if w.shape[1] == 1 else w

    def loss_weights(self):
        """The regularizers' weights as device tensors, made once per setting (what the compiled
        step guards on: a guard on the config object would recompile whenever it is replaced;
        float arguments measured ~8% slower compiled on CPU)."""
        key = (float(self.cfg.regularize_noise_weight), float(self.cfg.latent_dist_reg_weight))
        if self._weights_key != key:
            self._weights_key = key
            self._weights = tuple(torch.tensor(v, device=self.device) for v in key)
        return self._weights

    def loss_terms(self, w_opt, noise, target_features, degradation, w_noise, draws, noise_weight, latent_weight):
        """Per-target loss terms ``[B]`` at ``w_opt + w_noise`` (the w-noise is scaled outside: a
        float that changes every step would make the compiled step recompile every step)."""
        synth = self.synthesize(w_opt + w_noise, noise)
        degraded = degradation(synth, draws=draws) if degradation is not None else synth
        dist = (target_features - self.perceptual(degraded).float()).square().sum(dim=1)   # fp32 in any precision
        reg = noise_regularization(noise)
        latent = (w_opt - self.w_avg).square().sum(dim=[1, 2]) * latent_weight
        return dict(loss=dist + reg * noise_weight + latent, dist=dist, noise_reg=reg, latent_reg=latent)

    def start(self, targets, degradation, rngs, init) -> "OfficialRun":
        return OfficialRun(self, targets, degradation, rngs, init)


class OfficialRun(Run):
    """One batch of the official loop: schedule -> synthesis -> loss -> Adam step -> renormalize."""

    def __init__(self, method: OfficialMethod, targets, degradation, rngs, init):
        self.m, self.cfg, self.degradation, self.rngs = method, method.cfg, degradation, list(rngs)
        G, device, B = method.G, method.device, targets.shape[0]
        self.step, self.total = 0, self.cfg.num_steps
        with torch.no_grad():
            self.target_features = method.perceptual(targets)
        self.space = method.space_at(0)
        rows = 1 if self.space == "w" else G.num_ws
        w_opt = method.w_avg.repeat(B, rows, 1) if init is None else self._start_latent(init.to(device), B)
        self.w_opt = w_opt.detach().clone().requires_grad_(True)
        buffers = G.synthesis.noise_buffers()
        self.noise = {}
        for layer, res in method.layers.items():
            name = f"{layer}.noise_const"
            if self.cfg.noise_init == "const":
                draws = [buffers[name].detach().cpu().clone() for _ in self.rngs]
            else:
                draws = [rng.noise_init(name, (res, res)) for rng in self.rngs]
            self.noise[layer] = torch.stack(draws)[:, None].to(device).requires_grad_(self.cfg.optimize_noise)
        self.optimizer = self._optimizer()
        # Every step's w-noise comes from each target's stream after its noise maps, in step order
        # (the official order); a resumed run rewinds the streams here and draws past what it did.
        self.rng_state = [r.get_state() for r in self.rngs]
        self._units: Dict[int, torch.Tensor] = {}
        self._drawn = 0

    def _start_latent(self, init: torch.Tensor, batch: int) -> torch.Tensor:
        """A starting latent ``[B, w_dim]`` (W) or ``[B, num_ws, w_dim]`` (W+) as the first latent
        of the run's space (a W+ latent starts a W run only if its rows are equal)."""
        G = self.m.G
        init = init.float()
        if init.ndim == 2:
            init = init[:, None]
        if init.ndim != 3 or init.shape[0] != batch or init.shape[1] not in (1, G.num_ws) or init.shape[2] != G.w_dim:
            raise ValueError(f"init latents must be [{batch}, {G.w_dim}] or [{batch}, {G.num_ws}, {G.w_dim}], "
                             f"got {list(init.shape)}")
        if self.space == "w":
            if not torch.equal(init, init[:, :1].expand_as(init)):
                raise ValueError("init latents are W+ (one w per layer) but the run starts in W "
                                 "(latent_space w or w->w+); use latent_space: w+")
            return init[:, :1]
        return init.expand(batch, G.num_ws, G.w_dim)

    def _optimizer(self):
        params = [self.w_opt] + (list(self.noise.values()) if self.cfg.optimize_noise else [])
        return torch.optim.Adam(params, betas=(0.9, 0.999), lr=self.cfg.initial_learning_rate)

    def _unit(self, step: int) -> torch.Tensor:
        """This step's unit w-noise ``[B, rows, w_dim]``, drawn :data:`W_NOISE_CHUNK` steps at a
        time and moved to the device in one copy per chunk."""
        while step not in self._units:
            if self._drawn == 0:
                for r, state in zip(self.rngs, self.rng_state):
                    r.set_state(state)
            steps = list(range(self._drawn, min(self._drawn + W_NOISE_CHUNK, self.total)))
            rows = [1 if self.m.space_at(s) == "w" else self.m.G.num_ws for s in steps]
            w_dim = self.m.G.w_dim
            flat = torch.stack([torch.cat([r.w_noise_unit(s, (1, n, w_dim)).reshape(-1) for s, n in zip(steps, rows)])
                                for r in self.rngs]).to(self.m.device)
            offset = 0
            for s, n in zip(steps, rows):
                if s >= step:
                    self._units[s] = flat[:, offset:offset + n * w_dim].view(len(self.rngs), n, w_dim)
                offset += n * w_dim
            self._drawn = steps[-1] + 1
        return self._units.pop(step)

    def advance(self, draws):
        m, step = self.m, self.step
        if self.space == "w" and m.space_at(step) == "w+":
            self.w_opt = self.w_opt.detach().repeat(1, m.G.num_ws, 1).requires_grad_(True)
            self.space = "w+"
            self.optimizer = self._optimizer()
        lr = learning_rate(step, self.cfg)
        scale = w_noise_scale(step, m.w_std, self.cfg)
        stochastic = self.degradation is not None and self.degradation.stochastic
        with m.forward_precision():
            terms = m.terms(self.w_opt, self.noise, self.target_features, self.degradation,
                            self._unit(step) * scale, draws if stochastic else None, *m.loss_weights())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].sum().backward()
        self.optimizer.step()
        if self.cfg.optimize_noise:
            renormalize_noise(self.noise)
        self.step += 1
        return self.space.upper(), terms, dict(lr=lr, w_noise_scale=scale)

    def latent(self) -> torch.Tensor:
        return self.m.expand(self.w_opt.detach())

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        return self.m.synthesize(latent, {k: v.detach() for k, v in self.noise.items()})

    def state_dict(self) -> Dict[str, Any]:
        return dict(space=self.space, w_opt=self.w_opt.detach().cpu(),
                    noise={k: v.detach().cpu() for k, v in self.noise.items()},
                    optimizer=self.optimizer.state_dict(), rng=self.rng_state, step=self.step)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        device = self.m.device
        self.space = state["space"]
        self.w_opt = state["w_opt"].to(device).requires_grad_(True)
        self.noise = {k: v.to(device).requires_grad_(self.cfg.optimize_noise) for k, v in state["noise"].items()}
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng_state = state["rng"]
        self.step = int(state["step"])
        self._units, self._drawn = {}, 0

    def finish(self) -> List[Dict[str, Any]]:
        with torch.no_grad():
            image = self.render()
            degraded = self.degradation(image) if self.degradation is not None else image
        ws = self.latent()
        out = []
        for i in range(image.shape[0]):
            latents = {"ws": ws[i].cpu(), **{f"noise/{k}": v[i, 0].detach().cpu() for k, v in self.noise.items()}}
            out.append(dict(image=image[i].cpu(), degraded=degraded[i].cpu(), latents=latents))
        return out
