"""The restoration contract: every method restores a batch of targets the same way.

A method (:class:`Method`) is built from a generator, a perceptual function and its settings
(:class:`recon.config.ProjectorConfig`); :func:`recon.restore.make_method` builds the right one
from NVIDIA's VGG16. ``restore`` takes degraded targets, the degradation that made them (applied
to every generated image), one random source and one name per target, and optionally a starting
latent per target and a snapshot file; it returns one :class:`Restoration` per target.

What a method implements is one optimization step at a time (a :class:`Run` over one batch);
this module drives every method's runs the same way: the history (one row per step, copied from
the device every :data:`HISTORY_FLUSH_STEPS` steps, a non-finite loss stopping the run with the
target and step named), snapshots every ``snapshot_every`` steps in one format and exact resume
from them, progress callbacks, recorded trajectories, and the result type that saves and loads
itself. A target's result never depends on the batch it is in: each has its own random source and
its own latents, and no method mixes targets.

Value ranges: targets, images and degraded images are ``[N, 3, H, W]`` in the generator's range
[-1, 1] (methods convert internally where their reference code works in [0, 1]).
"""
from __future__ import annotations

import csv
import hashlib
import json
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from recon.config import ProjectorConfig
from recon.data.imageio import from_uint8, load_photo, save_npz, save_png, to_uint8, write_atomic
from recon.errors import ProjectionError

from .estimate import bind
from .precision import forward as precision_forward
from .precision import numerics
from .randomness import RandomSource, TorchRandom, step_draws

HISTORY_FLUSH_STEPS = 32     # loss terms stay on the device this many steps between host copies
SNAPSHOT_FORMAT = 2
HISTORY_COLUMNS = ("step", "phase", "loss", "dist")     # every method's first columns, in this order


# ----------------------------------------------------------------------------------------------
# The result

@dataclass
class Restoration:
    """One target's restoration.

    ``image``: ``[3, R, R]`` in [-1, 1], the restored image (what the optimized latents render);
    ``degraded``: that image through the degradation, in the observation's space; ``latents``:
    the arrays of ``latents.npz`` (method-specific names: ``ws`` and ``noise/<layer>`` for the
    official projector; ``w``, ``wp``, ``wpp`` for the robust method); ``history``: one row per
    step, ``step, phase, loss, dist`` then the method's own terms; ``phase_images``: the image at
    the end of each earlier phase (``W``, ``W+``); ``trajectory``: the latent after each step,
    by phase, when recorded."""
    name: str
    image: torch.Tensor
    degraded: torch.Tensor
    latents: Dict[str, torch.Tensor]
    history: List[dict]
    phase_images: Dict[str, torch.Tensor] = field(default_factory=dict)
    trajectory: Dict[str, List[torch.Tensor]] = field(default_factory=dict)
    samples: Optional["Samples"] = None
    estimates: Dict[str, float] = field(default_factory=dict)     # the degradation's unknowns found (sigma)

    def save(self, out_dir) -> List[str]:
        """Write ``image.png``, ``degraded.png``, ``image_<phase>.png``, ``latents.npz`` and
        ``loss.csv`` (each atomically), and the posterior samples' files when there are samples
        (:meth:`Samples.save`); returns the names of the files written."""
        out = Path(out_dir)
        files = {"image.png": self.image, "degraded.png": self.degraded}
        files.update({f"image_{phase}.png": img for phase, img in self.phase_images.items()})
        for name, img in files.items():
            save_png(out / name, to_uint8(img[None])[0])
        save_npz(out / "latents.npz", {k: v.detach().cpu().numpy() for k, v in self.latents.items()})
        columns = list(HISTORY_COLUMNS)
        for row in self.history:            # a tuning phase adds its own terms after the method's
            columns += [k for k in row if k not in columns]

        def write_csv(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.history)
        write_atomic(out / "loss.csv", write_csv)
        extra = self.samples.save(out) if self.samples is not None else []
        return [*files, "latents.npz", "loss.csv", *extra]

    @classmethod
    def load(cls, out_dir) -> "Restoration":
        """A saved restoration (images as their 8-bit files hold them)."""
        out = Path(out_dir)

        def image(name):
            return from_uint8(load_photo(out / name)[0])[0]
        with np.load(out / "latents.npz", allow_pickle=False) as z:
            latents = {k: torch.from_numpy(z[k]) for k in z.files}
        with open(out / "loss.csv", newline="") as f:
            history = [{k: (v if k == "phase" else int(v) if k == "step" else float(v)) for k, v in row.items()
                        if v != ""} for row in csv.DictReader(f)]
        phases = {p.stem[len("image_"):]: image(p.name) for p in sorted(out.glob("image_*.png"))}
        from .estimate import ESTIMATE_PREFIX
        estimates = {k[len(ESTIMATE_PREFIX):]: float(v) for k, v in latents.items() if k.startswith(ESTIMATE_PREFIX)}
        return cls(out.name, image("image.png"), image("degraded.png"), latents, history, phases, estimates=estimates)


UNCERTAINTY_FULL_SCALE = 0.25     # a per-pixel std of this much of the [-1, 1] range is white


@dataclass
class Samples:
    """Posterior samples of one target: ``images [K, 3, R, R]`` in [-1, 1], each sample's final
    distance to the observation ``dist [K]`` (the method's own), and ``best``, the sample that
    agrees best with the observation (the restoration's image)."""
    images: torch.Tensor
    dist: List[float]
    best: int

    @property
    def mean(self) -> torch.Tensor:
        return self.images.mean(dim=0)

    @property
    def std(self) -> torch.Tensor:
        """Per-pixel standard deviation over the samples, averaged over channels: ``[R, R]``."""
        return self.images.std(dim=0, unbiased=False).mean(dim=0)

    def uncertainty_png(self) -> np.ndarray:
        """The std map as an 8-bit gray image, on a fixed scale (white = :data:`UNCERTAINTY_FULL_SCALE`),
        so that maps of different faces and runs compare."""
        v = (self.std / UNCERTAINTY_FULL_SCALE).clamp(0, 1)
        return (v * 255 + 0.5).to(torch.uint8)[..., None].repeat(1, 1, 3).numpy()

    def save(self, out: Path) -> List[str]:
        """``samples/sample<k>.png``, ``mean.png``, ``uncertainty.png`` and ``samples.json``."""
        names = []
        for k, img in enumerate(self.images):
            names.append(f"samples/sample{k:02d}.png")
            save_png(out / names[-1], to_uint8(img[None])[0])
        save_png(out / "mean.png", to_uint8(self.mean[None])[0])
        save_png(out / "uncertainty.png", self.uncertainty_png())
        from recon.data.imageio import write_json
        write_json(out / "samples.json", dict(count=len(self.dist), best=self.best, dist=self.dist,
                                              mean_std=float(self.std.mean()),
                                              uncertainty_full_scale=UNCERTAINTY_FULL_SCALE))
        return [*names, "mean.png", "uncertainty.png", "samples.json"]


# ----------------------------------------------------------------------------------------------
# What a method implements

class Run(ABC):
    """One batch being restored: its latents and optimizer state. ``step`` counts the steps done
    of ``total``; :meth:`advance` does one."""
    step: int
    total: int

    @abstractmethod
    def advance(self, draws) -> Tuple[str, Dict[str, torch.Tensor], Dict[str, float]]:
        """One optimization step. Returns the phase it belonged to, the per-target loss terms
        ``[B]`` on the device (``loss`` and ``dist`` first: the whole loss, and the perceptual
        distance without regularizers) and the step's scalar settings (learning rate, ...)."""

    @abstractmethod
    def latent(self) -> torch.Tensor:
        """The current latents ``[B, ...]`` (what a recorded trajectory holds)."""

    @abstractmethod
    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, R, R]`` in [-1, 1] of latents shaped as :meth:`latent`'s, with
        everything else the run holds (noise maps) as it is; differentiable in the generator's
        weights (what the tuning phase changes)."""

    @torch.no_grad()
    def render(self) -> torch.Tensor:
        """The current images ``[B, 3, R, R]`` in [-1, 1] (no gradient)."""
        return self.synthesize(self.latent())

    @abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs (tensors on the CPU)."""

    @abstractmethod
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""

    @abstractmethod
    def finish(self) -> List[Dict[str, Any]]:
        """Per target: ``image``, ``degraded``, ``latents`` and ``phase_images`` (CPU tensors)."""


class Method(ABC):
    """A restoration method. Subclasses set ``name`` (its registry key), ``init_keys`` (the
    ``latents.npz`` arrays it can start from, most detailed first) and ``compilable`` (whether
    ``torch.compile`` of its step is supported), and implement the class methods that describe
    its settings and :meth:`start`."""
    name: ClassVar[str]
    init_keys: ClassVar[Tuple[str, ...]]
    compilable: ClassVar[bool] = False
    # the tuning phase's LPIPS features (img [-1, 1] -> [B, D]); make_method sets it when tuning
    tune_features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    # the arithmetic of every step (recon.restore.precision); make_method sets it
    precision: str = "fp32"

    def __init__(self, G, perceptual: Callable, cfg: ProjectorConfig):
        self.G, self.perceptual, self.cfg = G, perceptual, cfg
        self.device = next(G.parameters()).device

    # -- the settings ----------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def perceptual_from_vgg(cls, vgg) -> Callable:
        """The perceptual function this method uses, made from NVIDIA's VGG16 module."""

    @classmethod
    @abstractmethod
    def steps(cls, cfg: ProjectorConfig) -> int:
        """Optimization steps per target, each one generator forward and backward pass."""

    @classmethod
    @abstractmethod
    def budgeted(cls, cfg: ProjectorConfig, passes: int) -> ProjectorConfig:
        """``cfg`` with ``passes`` generator forward+backward passes per target."""

    @classmethod
    @abstractmethod
    def settings(cls, cfg: ProjectorConfig) -> Dict[str, Any]:
        """What a result of this method depends on (the starting latents' contents aside)."""

    @classmethod
    def start_problem(cls, cfg: ProjectorConfig, latent: torch.Tensor) -> Optional[str]:
        """Why ``latent`` (one target's: W, W+ or W++ shaped) cannot start a run with ``cfg``, or None."""
        return None

    @classmethod
    def fingerprint(cls, cfg: ProjectorConfig) -> str:
        keep = dict(cls.settings(cfg), method=cls.name)
        if cfg.tune.steps:              # absent when off: untuned results keep their fingerprints
            keep["tune"] = cfg.tune.model_dump()
        if cfg.samples.count > 1:
            keep["samples"] = cfg.samples.model_dump()
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def phase_images(cls, cfg: ProjectorConfig, start: Optional[torch.Tensor] = None) -> List[str]:
        """The earlier phases whose final image a result keeps (``image_<phase>.png``), for a run
        from ``start`` (one target's starting latent; None: w_avg), untuned."""
        return []

    @classmethod
    def last_phase(cls, cfg: ProjectorConfig, start: Optional[torch.Tensor] = None) -> str:
        """The phase of a run's last step (a tuned result keeps that phase's image)."""
        raise NotImplementedError

    @classmethod
    def result_files(cls, cfg: ProjectorConfig, start: Optional[torch.Tensor] = None) -> List[str]:
        """The files :meth:`Restoration.save` writes for one target of a run with ``cfg`` from
        ``start``: what a receipt of a finished result must vouch for, no more, no less."""
        phases = cls.phase_images(cfg, start) + ([cls.last_phase(cfg, start)] if cfg.tune.steps else [])
        files = ["image.png", "degraded.png", *(f"image_{p}.png" for p in dict.fromkeys(phases)), "latents.npz",
                 "loss.csv"]
        if cfg.samples.count > 1:
            files += [f"samples/sample{k:02d}.png" for k in range(cfg.samples.count)]
            files += ["mean.png", "uncertainty.png", "samples.json"]
        return files

    @classmethod
    def total_steps(cls, cfg: ProjectorConfig) -> int:
        """Steps of one restoration, the tuning phase's included (what a progress bar counts)."""
        return cls.steps(cfg) + cfg.tune.steps

    @classmethod
    def passes(cls, cfg: ProjectorConfig) -> int:
        """Generator forward+backward passes per target: every sample's steps and tuning steps."""
        return (cls.steps(cfg) + cfg.tune.steps * cfg.tune.passes_per_step) * cfg.samples.count

    @classmethod
    def within_budget(cls, cfg: ProjectorConfig, passes: int) -> ProjectorConfig:
        """``cfg`` with at most ``passes`` generator passes per target: shared by the samples, and
        by the method and the tuning phase in the proportion ``cfg`` gives them."""
        per_sample = max(1, passes // cfg.samples.count)
        tune = cfg.tune
        if tune.steps:
            share = tune.steps * tune.passes_per_step / (cls.steps(cfg) + tune.steps * tune.passes_per_step)
            tune_steps = max(1, round(per_sample * share / tune.passes_per_step))
            per_sample = max(1, per_sample - tune_steps * tune.passes_per_step)
            cfg = cfg.model_copy(update=dict(tune=tune.model_copy(update=dict(steps=tune_steps))))
        return cls.budgeted(cfg, per_sample)

    # -- one batch -------------------------------------------------------------------------------

    @abstractmethod
    def start(self, targets: torch.Tensor, degradation, rngs: Sequence[RandomSource],
              init: Optional[torch.Tensor]) -> Run:
        """A new :class:`Run` over ``targets`` (on the method's device, checked)."""

    def observed_size(self, degradation) -> int:
        return degradation.observed_size if degradation is not None else self.G.img_resolution

    def restore(self, targets: torch.Tensor, degradation=None, *, names: Optional[Sequence[str]] = None,
                rngs: Optional[Sequence[RandomSource]] = None, init: Optional[torch.Tensor] = None,
                snapshot_path=None, on_step: Optional[Callable[[int], None]] = None,
                on_snapshot: Optional[Callable[[int, torch.Tensor], None]] = None,
                record: bool = False, desc: Optional[str] = None,
                init_tuning: Optional[Sequence[Optional[dict]]] = None) -> List[Restoration]:
        """Restore each target.

        Args:
            targets: ``[B, 3, h, w]`` degraded targets in [-1, 1], as read from their 8-bit files
                (``h = w`` the degradation's observed size; the generator's without one).
            degradation: applied to every generated image (:class:`recon.restore.degrade.Degradation`);
                None for plain reconstruction.
            names: one per target, for messages and snapshots.
            rngs: one random source per target (default: :class:`TorchRandom` of ``cfg.seed``).
            init: starting latents ``[B, ...]`` (W, W+ or W++ shaped, as the method takes them).
            snapshot_path: a snapshot is written there every ``cfg.snapshot_every`` steps, and the run
                resumes from it when it is there.
            on_step: called with the number of steps done after each step.
            on_snapshot: called as ``on_snapshot(step, images [B, 3, R, R])`` at each snapshot.
            record: keep the latent of every step (``Restoration.trajectory``).
            desc: show a progress bar of the batch's steps, with this label.
            init_tuning: per target, the tuning its starting latent was found with
                (:func:`recon.restore.tune.factors_from_latents`; None or empty when untuned): the
                generator renders that target with it throughout (and a tuning phase adds to it).
        """
        G = self.G
        size = self.observed_size(degradation)
        if targets.ndim != 4 or tuple(targets.shape[1:]) != (G.img_channels, size, size):
            raise ValueError(f"targets must be [B, {G.img_channels}, {size}, {size}] for this generator"
                             f"{' and degradation' if degradation is not None else ''}, got {tuple(targets.shape)}")
        if degradation is not None and degradation.size != G.img_resolution:
            raise ValueError(f"degradation is for {degradation.size} px images, generator makes {G.img_resolution} px")
        B = targets.shape[0]
        names = list(names) if names is not None else [f"target{i}" for i in range(B)]
        rngs = list(rngs) if rngs is not None else [TorchRandom(self.cfg.seed) for _ in range(B)]
        if len(names) != B or len(rngs) != B:
            raise ValueError("names and rngs must have one entry per target")
        K = self.cfg.samples.count
        if K == 1:
            from .tune import tuned, with_base
            with tuned(G, init_tuning or []):
                results = self._restore(targets, degradation, names, rngs, init, snapshot_path, on_step,
                                        on_snapshot, record, desc)
            for res, base in zip(results, init_tuning or []):
                res.latents = with_base(res.latents, base)
            return results
        if init is not None:
            raise ValueError(f"posterior samples ({K}) draw their own starting latents; init must be None")
        rngs = [r.child(f"sample{k}") for r in rngs for k in range(K)]
        shown = (lambda step, images: on_snapshot(step, images[::K])) if on_snapshot is not None else None
        runs = self._restore(targets.repeat_interleave(K, 0), degradation.repeated(K) if degradation else None,
                             [f"{n}, sample {k}" for n in names for k in range(K)], rngs, self.sample_starts(rngs),
                             snapshot_path, on_step, shown, record, desc)
        return [gather_samples(names[i], runs[i * K:(i + 1) * K]) for i in range(B)]

    @torch.no_grad()
    def sample_starts(self, rngs: Sequence[RandomSource]) -> torch.Tensor:
        """One starting W ``[len(rngs), w_dim]`` per source: a random face's w at truncation
        ``samples.truncation_psi`` (toward the generator's ``w_avg``)."""
        z = torch.stack([r.normal(-1, "samples.z", (self.G.z_dim,)) for r in rngs]).to(self.device)
        return self.G.mapping(z, None, truncation_psi=self.cfg.samples.truncation_psi)[:, 0].float()

    def _restore(self, *args) -> List[Restoration]:
        with numerics(self.precision, self.device):
            return self._restore_in(*args)

    def forward_precision(self):
        """The context a step's forward pass runs in (:func:`recon.restore.precision.forward`)."""
        return precision_forward(self.precision, self.device)

    def _restore_in(self, targets, degradation, names, rngs, init, snapshot_path, on_step, on_snapshot, record,
                    desc) -> List[Restoration]:
        from tqdm import tqdm

        B = targets.shape[0]
        every = self.cfg.snapshot_every
        snapshot_path = Path(snapshot_path) if snapshot_path else None

        targets = targets.to(self.device, torch.float32)
        states = [r.get_state() for r in rngs]      # a run made twice draws the same starting values
        run, est = self._new_run(targets, degradation, rngs, init, states)
        history: List[List[dict]] = [[] for _ in range(B)]
        trajectory: List[Dict[str, List[torch.Tensor]]] = [{} for _ in range(B)]
        if snapshot_path is not None and not self._resume(run, est, snapshot_path, names, history, trajectory):
            # a snapshot that failed half-way through loading: start clean
            run, est = self._new_run(targets, degradation, rngs, init, states)
        pending: list = []
        bar = tqdm(total=run.total, initial=run.step, desc=desc, unit="step", disable=desc is None)
        while run.step < run.total:
            step = run.step
            if est is not None:
                est.zero_grad()
            phase, terms, scalars = run.advance(step_draws(rngs, step))
            if est is not None:         # the unknowns step with the latents, on the same loss
                est.step()
                terms = dict(terms, **{k: v.detach() for k, v in est.values().items()})
            if pending and list(terms) != pending[-1][3]:        # a phase with other terms (tuning)
                self._flush(pending, history, names, snapshot_path)
            pending.append((step, phase, scalars, list(terms), torch.stack([t.detach() for t in terms.values()])))
            if record:
                latent = run.latent().detach()
                for i in range(B):
                    trajectory[i].setdefault(phase, []).append(latent[i].clone())
            due = bool(snapshot_path and every and run.step % every == 0 and run.step < run.total)
            if due or run.step == run.total or len(pending) >= HISTORY_FLUSH_STEPS:
                self._flush(pending, history, names, snapshot_path)
                bar.update(run.step - bar.n)
            if on_step is not None:
                on_step(run.step)
            if due:
                self._snapshot(run, est, snapshot_path, names, history, trajectory)
                if on_snapshot is not None:
                    on_snapshot(run.step, run.render())
        bar.close()
        results = [Restoration(names[i], history=history[i], trajectory=trajectory[i], **out)
                   for i, out in enumerate(run.finish())]
        if est is not None:
            from .estimate import ESTIMATE_PREFIX
            for res, found in zip(results, est.per_target()):
                res.estimates = found
                res.latents.update({f"{ESTIMATE_PREFIX}{k}": torch.tensor(v, dtype=torch.float32)
                                    for k, v in found.items()})
        return results

    def _new_run(self, targets, degradation, rngs, init, states):
        """``(run, estimates)``: the batch's run from the random sources' ``states``, with the
        degradation's unknowns (:mod:`recon.restore.estimate`) bound in; the tuning phase after
        the method's when configured."""
        for r, state in zip(rngs, states):
            r.set_state(state)
        bound, est = bind(degradation, targets.shape[0], self.device)
        run = self.start(targets, bound, rngs, init)
        if self.cfg.tune.steps:
            if self.tune_features is None:
                raise ValueError("tuning needs the method's tune_features (make the method with make_method)")
            from .tune import TunedRun
            run = TunedRun(run, self.G, self.tune_features, self.cfg.tune, targets, bound, rngs,
                           self.forward_precision)
        return run, est

    # -- history and snapshots, the same for every method ----------------------------------------

    @staticmethod
    def _flush(pending: list, history: List[List[dict]], names, snapshot_path) -> None:
        """Copy the loss terms kept on the device to the history in one transfer; stop at the
        first non-finite loss, naming the target and the step."""
        if not pending:
            return
        table = torch.stack([t for *_, t in pending]).cpu()          # [steps, terms, B]
        bad = ~torch.isfinite(table[:, 0])
        if bad.any():
            k, i = (int(x) for x in bad.nonzero()[0])
            step, _, scalars, _, _ = pending[k]
            lr = f" (learning rate {scalars['lr']:.4g})" if "lr" in scalars else ""
            where = f"; last good snapshot: {snapshot_path}" if snapshot_path and snapshot_path.exists() else ""
            raise ProjectionError(f"target {names[i]}: non-finite loss at step {step}{lr}{where}")
        for (step, phase, scalars, keys, _), rows in zip(pending, table.tolist()):
            for i, hist in enumerate(history):
                hist.append(dict(step=step, phase=phase, **{k: r[i] for k, r in zip(keys, rows)}, **scalars))
        pending.clear()

    def _snapshot(self, run: Run, est, path: Path, names, history, trajectory) -> None:
        data = dict(format=SNAPSHOT_FORMAT, method=self.name, fingerprint=self.fingerprint(self.cfg),
                    names=list(names), step=run.step, history=json.dumps(history),
                    trajectory=[{p: torch.stack(v) for p, v in t.items()} for t in trajectory],
                    run=run.state_dict(), estimates=est.state_dict() if est is not None else None)
        write_atomic(path, lambda tmp: torch.save(data, tmp))

    def _resume(self, run: Run, est, path: Path, names, history, trajectory) -> bool:
        """Continue ``run`` from the snapshot at ``path``; False when ``run`` must be made anew. A
        snapshot that cannot be read or whose contents are not a snapshot's (a truncated file,
        a forged one: anything the run cannot load) is removed with a warning naming it, and the
        batch starts over; one made by other settings or for other targets is refused (it belongs
        to another run)."""
        if not path.is_file() or path.is_symlink():
            if path.is_symlink():
                path.unlink()
            return True
        try:
            if path.stat().st_size > MAX_SNAPSHOT_BYTES:
                raise ValueError(f"larger than {MAX_SNAPSHOT_BYTES >> 30} GB")
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
                raise ValueError("not a recon snapshot of this version")
            if data.get("fingerprint") != self.fingerprint(self.cfg) or data.get("names") != list(names):
                raise _OtherRun()
            saved = _snapshot_history(data, len(names))
            if (est is None) != (data.get("estimates") is None):
                raise ValueError("its estimates are not this run's")
            run.load_state_dict(data["run"])
            if est is not None:
                est.load_state_dict(data["estimates"])
            step = data["step"]
            if not isinstance(step, int) or step != run.step:
                raise ValueError(f"its step {step!r} is not its run's ({run.step})")
            history[:] = saved
            for mine, kept in zip(trajectory, data.get("trajectory") or [{}] * len(names)):
                mine.update({p: list(v.to(self.device)) for p, v in kept.items()})
        except _OtherRun:
            raise ProjectionError(f"{path}: snapshot was made with other settings or targets; delete it to start "
                                  "over") from None
        except Exception as exc:            # any unreadable file: it holds nothing to resume
            warnings.warn(f"{path}: unreadable snapshot ({type(exc).__name__}: {str(exc).strip()[:200]}); "
                          "removed, the batch starts over", RuntimeWarning, stacklevel=3)
            path.unlink(missing_ok=True)
            history[:] = [[] for _ in names]
            for mine in trajectory:
                mine.clear()
            return False
        return True


MAX_SNAPSHOT_BYTES = 16 << 30


class _OtherRun(Exception):
    """A readable snapshot of another run's settings or targets."""


def _snapshot_history(data: dict, targets: int) -> List[List[dict]]:
    """A snapshot's history (JSON in a string), bounded in depth, one list of rows per target."""
    from recon.data.ownfiles import MAX_DEPTH, json_depth

    text = data.get("history")
    if not isinstance(text, str) or json_depth(text) > MAX_DEPTH:
        raise ValueError("its history is not a table of steps")
    history = json.loads(text)
    if not (isinstance(history, list) and len(history) == targets and all(isinstance(h, list) for h in history)
            and all(isinstance(row, dict) for h in history for row in h)):
        raise ValueError("its history is not a table of steps per target")
    return history


def gather_samples(name: str, runs: List[Restoration]) -> Restoration:
    """One target's restoration from its samples' (in sample order): the best one's (lowest final
    distance to the observation), with every sample's image kept in ``samples``."""
    dist = [float(r.history[-1]["dist"]) if r.history else float("inf") for r in runs]
    best = int(np.argmin(dist))
    chosen = runs[best]
    return Restoration(name, chosen.image, chosen.degraded, chosen.latents, chosen.history, chosen.phase_images,
                       chosen.trajectory, Samples(torch.stack([r.image for r in runs]), dist, best),
                       estimates=chosen.estimates)


def snapshot_step(path) -> int:
    """The step a snapshot file was taken at (0 when there is none or it cannot be read)."""
    path = Path(path)
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_SNAPSHOT_BYTES:
            return 0
        step = torch.load(path, map_location="cpu", weights_only=True)["step"]
        return step if isinstance(step, int) and step >= 0 else 0
    except Exception:           # an unreadable snapshot is dealt with (and named) when the run starts
        return 0


def stack_starts(inits: Sequence[torch.Tensor], num_ws: int) -> torch.Tensor:
    """One batch of starting latents from one per target: W ones broadcast to W+ when the batch
    mixes the two."""
    if len({t.ndim for t in inits}) > 1:
        inits = [t[None].repeat(num_ws, 1) if t.ndim == 1 else t for t in inits]
    return torch.stack(list(inits))
