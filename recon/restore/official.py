"""Latent optimization: find the ws (and noise maps) whose degraded image matches a degraded target.

The default is NVIDIA's official projector (stylegan2-ada-pytorch ``projector.py``): w_avg and the
RMS w distance from ``w_avg_samples`` mapped z's, Adam with a learning-rate ramp-up and cosine
ramp-down, decaying Gaussian noise on w, and optimized noise maps with their autocorrelation
regularization and per-step re-normalization. Beyond it:

* a batch of targets in one forward pass, each with its own latents, noise maps and random
  stream (a target gives the same result alone or in any batch);
* the reference study's latent-distance regularization ``latent_dist_reg_weight * |w - w_avg|^2``;
* latent spaces ``w``, ``w+`` and ``w->w+`` (W first, then one w per layer, in the spirit of
  Poirier-Ginter & Lalonde, CVPR 2023);
* any differentiable degradation applied to every generated image before the loss;
* snapshots every K steps and exact resume; non-finite losses stop with the target and step named;
* the saved image is the one that was optimized (w and the optimized noise maps), unlike the
  official tool, which re-renders with the network's own noise buffers.

Value ranges: targets and generated images are ``[N, 3, R, R]`` in [-1, 1]; the feature function
maps them to [0, 255] itself (see :mod:`recon.perceptual`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from recon.config import LATENT_SPACES, ProjectorConfig  # noqa: F401  (re-exported)
from .degrade import Degradation, fill_missing
from recon.errors import ProjectionError
from recon.data.imageio import save_png, to_uint8, write_atomic

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
HISTORY_FLUSH_STEPS = 32   # loss terms stay on the device this many steps between host copies



# ----------------------------------------------------------------------------------------------
# Randomness: one stream per target, behind a seam so that recorded draws can be replayed.

class TorchRandom:
    """Draws from a CPU ``torch.Generator`` (the same on every device), in the official order:
    the noise maps in state_dict order, then one w-noise draw per step."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)

    def normal(self, step: int, tag: str, shape) -> torch.Tensor:
        """Standard normal draws for ``tag`` at ``step`` (a stochastic degradation, the robust
        loss's hole noise): from their own generator keyed by (seed, step, tag), so they do not
        move the main stream, and a resumed run or another batch gets the same values."""
        key = hashlib.sha256(f"{self.seed}/{int(step)}/{tag}".encode()).digest()
        return torch.randn(shape, generator=torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1))

    def noise_init(self, name: str, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)

    def w_noise_unit(self, step: int, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)

    def get_state(self):
        return self.gen.get_state()

    def set_state(self, state) -> None:
        self.gen.set_state(state)


class RecordedRandom:
    """Replays recorded draws (``noise_init[name]`` and ``w_noise_unit[step]``), e.g. an official run's."""

    def __init__(self, noise_init: Dict[str, torch.Tensor], w_noise_unit: torch.Tensor,
                 normals: Optional[Dict[tuple, torch.Tensor]] = None):
        self.noise = noise_init
        self.w_noise = w_noise_unit
        self.normals = normals or {}

    def normal(self, step: int, tag: str, shape) -> torch.Tensor:
        return self.normals[int(step), tag].reshape(shape).clone()

    def noise_init(self, name: str, shape) -> torch.Tensor:
        return self.noise[name].reshape(shape).clone()

    def w_noise_unit(self, step: int, shape) -> torch.Tensor:
        return self.w_noise[step].reshape(shape).clone()

    def get_state(self):
        return torch.zeros(0, dtype=torch.uint8)

    def set_state(self, state) -> None:
        pass


def step_draws(rngs, step: int):
    """The fresh randomness of one step as a degradation takes it: ``draws(tag, shape)`` ->
    ``[B, *shape]``, row i from target i's own source."""
    return lambda tag, shape: torch.stack([r.normal(step, tag, shape) for r in rngs])


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
    reg = 0.0
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
# Results

@dataclass
class ProjectionResult:
    name: str
    ws: torch.Tensor                   # [num_ws, w_dim]
    noise: Dict[str, torch.Tensor]     # layer -> [res, res]
    image: torch.Tensor                # [3, R, R] in [-1, 1]: synthesis(ws, optimized noise)
    degraded: torch.Tensor             # [3, R, R]: degradation(image)
    history: List[dict]
    w_trajectory: Optional[torch.Tensor] = None   # [steps, num_ws, w_dim] when recorded

    def save(self, out_dir) -> Path:
        """Write image.png, degraded.png, latents.npz (ws, noise maps) and loss.csv."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_png(out / "image.png", to_uint8(self.image[None])[0])
        save_png(out / "degraded.png", to_uint8(self.degraded[None])[0])
        arrays = {"ws": self.ws.cpu().numpy()}
        arrays.update({f"noise/{k}": v.cpu().numpy() for k, v in self.noise.items()})

        def write_npz(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        write_atomic(out / "latents.npz", write_npz)

        def write_csv(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(self.history[0]))
                writer.writeheader()
                writer.writerows(self.history)
        write_atomic(out / "loss.csv", write_csv)
        return out


def snapshot_step(path) -> int:
    """The step a snapshot file was taken at (0 when there is none)."""
    path = Path(path)
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


# ----------------------------------------------------------------------------------------------
# The optimization

@dataclass
class _State:
    step: int
    space: str                      # 'w' or 'w+' (current)
    w_opt: torch.Tensor             # [B, 1 or num_ws, w_dim]
    noise: Dict[str, torch.Tensor]  # layer -> [B, 1, res, res]
    optimizer: torch.optim.Optimizer
    history: List[List[dict]]
    trajectory: Optional[List[torch.Tensor]] = None
    rng_from: int = 0               # the step at which rng_state was taken
    rng_state: Optional[list] = None


class Projector:
    """Projects batches of targets into a generator's latent space.

    Args:
        G: the generator (eval mode; its weights are never changed).
        features: ``img [-1, 1] -> [N, D]`` (e.g. :class:`recon.perceptual.VGGFeatures`).
        cfg: hyperparameters.
    """

    def __init__(self, G, features: FeatureFn, cfg: ProjectorConfig = ProjectorConfig(), compile: bool = False):
        self.G = G
        self.features = features
        self.cfg = cfg
        self.device = next(G.parameters()).device
        self.w_avg, self.w_std = w_stats(G, cfg.w_avg_samples, cfg.w_avg_seed)
        self.w_avg = self.w_avg.to(self.device)
        self.layers = G.synthesis.noise_layers()
        self._terms = self._loss_terms
        if compile:
            from .compiled import CompiledOrEager
            self._terms = CompiledOrEager(self._loss_terms, self.device)

    # -- state ---------------------------------------------------------------------------------

    def _space_at(self, step: int) -> str:
        if self.cfg.latent_space == "w->w+":
            return "w" if step < round(self.cfg.w_plus_switch * self.cfg.num_steps) else "w+"
        return self.cfg.latent_space

    def _make_optimizer(self, w_opt, noise):
        params = [w_opt] + (list(noise.values()) if self.cfg.optimize_noise else [])
        return torch.optim.Adam(params, betas=(0.9, 0.999), lr=self.cfg.initial_learning_rate)

    def _init_state(self, batch: int, rngs, record_w: bool, init_ws: Optional[torch.Tensor] = None) -> _State:
        space = self._space_at(0)
        rows = 1 if space == "w" else self.G.num_ws
        if init_ws is None:
            w_opt = self.w_avg.repeat(batch, rows, 1)
        else:
            w_opt = self._start_latent(init_ws.to(self.device, torch.float32), space, batch)
        w_opt = w_opt.detach().clone().requires_grad_(True)
        noise = {}
        buffers = self.G.synthesis.noise_buffers()
        for layer, res in self.layers.items():
            name = f"{layer}.noise_const"
            if self.cfg.noise_init == "const":
                draws = [buffers[name].detach().cpu().clone() for _ in rngs]
            else:
                draws = [rng.noise_init(name, (res, res)) for rng in rngs]
            noise[layer] = torch.stack(draws)[:, None].to(self.device).requires_grad_(self.cfg.optimize_noise)
        return _State(0, space, w_opt, noise, self._make_optimizer(w_opt, noise), [[] for _ in range(batch)],
                      [] if record_w else None, 0, [r.get_state() for r in rngs])

    def _start_latent(self, init_ws: torch.Tensor, space: str, batch: int) -> torch.Tensor:
        """``init_ws`` ``[B, 1 or num_ws, w_dim]`` as the first latent of ``space`` (a W+ latent
        can start a W run only if its rows are equal)."""
        G = self.G
        if init_ws.ndim != 3 or init_ws.shape[0] != batch or init_ws.shape[1] not in (1, G.num_ws) \
                or init_ws.shape[2] != G.w_dim:
            raise ValueError(f"init latents must be [{batch}, 1 or {G.num_ws}, {G.w_dim}], got {list(init_ws.shape)}")
        if space == "w":
            if not torch.equal(init_ws, init_ws[:, :1].expand_as(init_ws)):
                raise ValueError("init latents are W+ (one w per layer) but the run starts in W "
                                 "(latent_space w or w->w+); use latent_space: w+")
            return init_ws[:, :1]
        return init_ws.expand(batch, G.num_ws, G.w_dim)

    def _switch_to_w_plus(self, st: _State) -> None:
        w_opt = st.w_opt.detach().repeat(1, self.G.num_ws, 1).requires_grad_(True)
        st.w_opt, st.space = w_opt, "w+"
        st.optimizer = self._make_optimizer(w_opt, st.noise)

    def _snapshot(self, st: _State, rngs, names, path: Path) -> None:
        data = dict(fingerprint=self.cfg.fingerprint(), names=list(names), step=st.step, space=st.space,
                    w_opt=st.w_opt.detach().cpu(), noise={k: v.detach().cpu() for k, v in st.noise.items()},
                    optimizer=st.optimizer.state_dict(), rng=st.rng_state, rng_from=st.rng_from,
                    history=json.dumps(st.history),
                    trajectory=torch.stack(st.trajectory) if st.trajectory else None)
        write_atomic(path, lambda tmp: torch.save(data, tmp))

    def _resume(self, path: Path, names, rngs, record_w: bool) -> Optional[_State]:
        if not path.is_file():
            return None
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data["fingerprint"] != self.cfg.fingerprint() or data["names"] != list(names):
            raise ProjectionError(f"{path}: snapshot was made with other settings or targets; "
                                  "delete it to start over")
        w_opt = data["w_opt"].to(self.device).requires_grad_(True)
        noise = {k: v.to(self.device).requires_grad_(self.cfg.optimize_noise) for k, v in data["noise"].items()}
        opt = self._make_optimizer(w_opt, noise)
        opt.load_state_dict(data["optimizer"])
        traj = list(data["trajectory"].to(self.device)) if (record_w and data["trajectory"] is not None) else (
            [] if record_w else None)
        return _State(data["step"], data["space"], w_opt, noise, opt, json.loads(data["history"]), traj,
                      int(data.get("rng_from", data["step"])), data["rng"])

    # -- one step ------------------------------------------------------------------------------

    def _ws(self, w: torch.Tensor) -> torch.Tensor:
        return w.repeat(1, self.G.num_ws, 1) if w.shape[1] == 1 else w

    def synthesize(self, w: torch.Tensor, noise: Dict[str, torch.Tensor]) -> torch.Tensor:
        # On CPU the activation-scaling path (fused_modconv=False) is ~20% faster than one grouped
        # convolution and equal up to rounding; on CUDA keep NVIDIA's choice.
        fused = None if self.device.type == "cuda" else False
        return self.G.synthesis(self._ws(w), noise_mode="const", noise_inputs=noise, fused_modconv=fused)

    # The official loop, one phase per method: schedule -> synthesis -> loss -> step -> record.

    def schedule(self, step: int):
        """``(learning rate, w-noise scale)`` at ``step``: ramp up, cosine ramp down, noise decay."""
        return learning_rate(step, self.cfg), w_noise_scale(step, self.w_std, self.cfg)

    def draw_w_noise(self, st: _State, rngs) -> Dict[int, torch.Tensor]:
        """Every remaining step's unit w-noise ``[B, rows, w_dim]``, drawn up front in the official
        order from each target's own random source (from the state it had at ``st.rng_from``, so
        a resumed run draws the same values) and moved to the device in one copy, not one per step."""
        steps = list(range(st.rng_from, self.cfg.num_steps))
        rows = [1 if self._space_at(s) == "w" else self.G.num_ws for s in steps]
        w_dim = self.G.w_dim
        flat = torch.stack([torch.cat([r.w_noise_unit(s, (1, n, w_dim)).reshape(-1) for s, n in zip(steps, rows)])
                            if steps else torch.zeros(0) for r in rngs]).to(self.device)
        units, offset = {}, 0
        for s, n in zip(steps, rows):
            units[s] = flat[:, offset:offset + n * w_dim].view(len(rngs), n, w_dim)
            offset += n * w_dim
        return units

    def loss(self, st: _State, target_features, degradation, unit: torch.Tensor, scale: float,
             draws=None) -> Dict[str, torch.Tensor]:
        """Per-target loss terms ``[B]`` at the state's current latents (w perturbed by ``unit * scale``);
        ``draws``: the step's fresh randomness for a stochastic degradation (:func:`step_draws`)."""
        # What the compiled step reads is what torch.compile guards on: the w-noise is scaled out
        # here (a float that changes every step would recompile every step), and the weights come
        # as device tensors (a guard on the config object would recompile whenever it is
        # replaced; float arguments measured ~8% slower compiled on CPU).
        return self._terms(st.w_opt, st.noise, target_features, degradation, unit * scale, draws,
                           *self._loss_weights())

    def _loss_weights(self):
        key = (float(self.cfg.regularize_noise_weight), float(self.cfg.latent_dist_reg_weight))
        if getattr(self, "_weights_key", None) != key:      # made once per setting: no copy per step
            self._weights_key = key
            self._weights = tuple(torch.tensor(v, device=self.device) for v in key)
        return self._weights

    def _loss_terms(self, w_opt, noise, target_features, degradation, w_noise, draws, noise_weight, latent_weight):
        synth = self.synthesize(w_opt + w_noise, noise)
        degraded = degradation(synth, draws=draws) if degradation is not None else synth
        dist = (target_features - self.features(degraded)).square().sum(dim=1)
        reg = noise_regularization(noise)
        latent = (w_opt - self.w_avg).square().sum(dim=[1, 2]) * latent_weight
        return dict(loss=dist + reg * noise_weight + latent, dist=dist, noise_reg=reg, latent_reg=latent)

    def step(self, st: _State, loss: torch.Tensor, lr: float) -> None:
        for group in st.optimizer.param_groups:
            group["lr"] = lr
        st.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        st.optimizer.step()
        if self.cfg.optimize_noise:
            renormalize_noise(st.noise)

    def record(self, st: _State, pending: list, names, snapshot_path) -> None:
        """Copy the loss terms kept on the device since the last call to the host history (one
        transfer, not four per target and step) and stop at the first non-finite loss."""
        if not pending:
            return
        table = torch.stack([t for _, _, _, t in pending]).cpu()        # [steps, 4, B]
        bad = ~torch.isfinite(table[:, 0])
        if bad.any():
            k, i = (int(x) for x in bad.nonzero()[0])
            step, lr = pending[k][0], pending[k][1]
            where = f"; last good snapshot: {snapshot_path}" if snapshot_path and snapshot_path.exists() else ""
            raise ProjectionError(f"target {names[i]}: non-finite loss at step {step} (learning rate {lr:.4g}){where}")
        for (step, lr, scale, _), row in zip(pending, table.tolist()):
            for i, hist in enumerate(st.history):
                hist.append(dict(step=step, loss=row[0][i], dist=row[1][i], noise_reg=row[2][i],
                                 latent_reg=row[3][i], lr=lr, w_noise_scale=scale))
        pending.clear()

    def project(self, targets: torch.Tensor, degradation: Optional[Degradation] = None,
                names: Optional[Sequence[str]] = None, rngs=None, snapshot_path=None, progress: bool = True,
                record_w: bool = False, on_snapshot: Optional[Callable] = None,
                on_step: Optional[Callable[[int], None]] = None, desc: Optional[str] = None,
                init_ws: Optional[torch.Tensor] = None) -> List[ProjectionResult]:
        """Optimize one latent (and noise maps) per target.

        Args:
            targets: ``[B, 3, R, R]`` degraded targets in [-1, 1] (as read from the 8-bit files).
            degradation: applied to every generated image; None for plain reconstruction.
            names: one per target, for messages and snapshots.
            rngs: one random source per target (default: :class:`TorchRandom` with ``cfg.seed``).
            snapshot_path: write a snapshot there every ``cfg.snapshot_every`` steps and resume
                from it when it exists.
            record_w: keep the w of every step (``ProjectionResult.w_trajectory``).
            on_snapshot: called as ``on_snapshot(step, images [B, 3, R, R])`` at each snapshot.
            on_step: called with the number of steps done after each step (a stage's progress).
            desc: the progress bar's label.
            init_ws: ``[B, 1 or num_ws, w_dim]`` starting latents instead of ``w_avg`` (the
                latent regularizer still pulls toward ``w_avg``).
        """
        from tqdm import tqdm

        cfg, G = self.cfg, self.G
        R = G.img_resolution
        if targets.ndim != 4 or targets.shape[1:] != (G.img_channels, R, R):
            raise ValueError(f"targets must be [B, {G.img_channels}, {R}, {R}] for this generator, "
                             f"got {tuple(targets.shape)}")
        B = targets.shape[0]
        names = list(names) if names is not None else [f"target{i}" for i in range(B)]
        rngs = list(rngs) if rngs is not None else [TorchRandom(cfg.seed) for _ in range(B)]
        if len(names) != B or len(rngs) != B:
            raise ValueError("names and rngs must have one entry per target")
        if degradation is not None and degradation.size != R:
            raise ValueError(f"degradation is for {degradation.size} px images, generator makes {R} px")

        targets = targets.to(self.device, torch.float32)
        if degradation is not None and degradation.has_mask:
            fill = degradation.fill(self.device)
            targets = fill_missing(targets, degradation.masks.to(self.device), fill)
        with torch.no_grad():
            target_features = self.features(targets)

        snapshot_path = Path(snapshot_path) if snapshot_path else None
        st = (self._resume(snapshot_path, names, rngs, record_w) if snapshot_path else None) or \
            self._init_state(B, rngs, record_w, init_ws)

        for r, state in zip(rngs, st.rng_state):
            r.set_state(state)
        units = self.draw_w_noise(st, rngs)
        label = desc or f"project {names[0]}" + (f" +{B - 1}" if B > 1 else "")
        bar = tqdm(total=cfg.num_steps, initial=st.step, desc=label, unit="step", disable=not progress)
        pending = []
        while st.step < cfg.num_steps:
            if st.space == "w" and self._space_at(st.step) == "w+":
                self._switch_to_w_plus(st)
            lr, scale = self.schedule(st.step)
            draws = step_draws(rngs, st.step) if degradation is not None and degradation.stochastic else None
            terms = self.loss(st, target_features, degradation, units.pop(st.step), scale, draws)
            self.step(st, terms["loss"], lr)
            pending.append((st.step, lr, scale, torch.stack([terms[k].detach() for k in
                                                             ("loss", "dist", "noise_reg", "latent_reg")])))
            if st.trajectory is not None:
                st.trajectory.append(self._ws(st.w_opt.detach()).clone())
            st.step += 1
            snapshot_due = bool(snapshot_path and cfg.snapshot_every and st.step % cfg.snapshot_every == 0
                                and st.step < cfg.num_steps)
            if snapshot_due or st.step == cfg.num_steps or len(pending) >= HISTORY_FLUSH_STEPS:
                self.record(st, pending, names, snapshot_path)
                bar.update(st.step - bar.n)
                bar.set_postfix(distance=f"{sum(h[-1]['dist'] for h in st.history) / B:.4g}", refresh=False)
            if on_step is not None:
                on_step(st.step)
            if snapshot_due:
                self._snapshot(st, rngs, names, snapshot_path)
                if on_snapshot is not None:
                    with torch.no_grad():
                        on_snapshot(st.step, self.synthesize(st.w_opt, st.noise))
        bar.close()

        with torch.no_grad():
            image = self.synthesize(st.w_opt, st.noise)
            degraded = degradation(image) if degradation is not None else image
        ws = self._ws(st.w_opt.detach())
        traj = torch.stack(st.trajectory) if st.trajectory is not None else None
        return [ProjectionResult(names[i], ws[i].cpu(), {k: v[i, 0].detach().cpu() for k, v in st.noise.items()},
                                 image[i].cpu(), degraded[i].cpu(), st.history[i],
                                 traj[:, i].cpu() if traj is not None else None) for i in range(B)]
