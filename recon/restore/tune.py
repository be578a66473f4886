"""The tuning phase: fine-tune the generator around the found latent, through the degradation.

Pivotal tuning (Roich et al., "Pivotal Tuning for Latent-based Editing of Real Images", 2022)
fine-tunes the generator's weights so that the found latent (the pivot) renders the target
exactly, with a locality regularizer that keeps the generator unchanged at latents around the
pivot. Here the loss compares the *degraded* generated image with the degraded target (what was
observed), so tuning can only add what the observation supports; and the change is one low-rank
delta ``A @ B`` per modulated convolution and target (LoRA-style, ``tune.rank``), which is what
is stored, in float16 (a whole 1024 px generator per face, as PTI stores, is 127 MB).

:class:`TunedRun` wraps any method's :class:`recon.restore.method.Run`: the method's steps first,
then ``tune.steps`` tuning steps, one history, one snapshot format, one progress count. Each
target has its own factors and Adam state, so a target's result does not depend on its batch.

Per step and target: ``L2 + LPIPS`` of the degraded generated image against the target, plus
``locality_weight * (L2 + LPIPS)`` between the tuned and the original generator's images at
``pivot + locality_reach * (w_z - pivot)``, ``w_z`` a random face's w (a fresh keyed draw per
step). LPIPS is NVIDIA's VGG16 feature distance (:class:`recon.model.perceptual.VGGFeatures`).
Values: images in [-1, 1].
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from recon.config import TuneConfig
from recon.model.networks import modulated_layers, per_target_weights

from .method import Run

FACTOR_PREFIX = "tune/"          # latents.npz keys: tune/<layer>.a [O, r], tune/<layer>.b [r, I*k*k]
STORED_DTYPE = torch.float16


def factor_shapes(G) -> Dict[str, tuple]:
    """Per modulated layer, ``(O, I*k*k)``: the delta's shape as a matrix."""
    weights = {name: m.get_parameter("weight") for name, m in modulated_layers(G.synthesis).items()}
    return {name: (w.shape[0], w[0].numel()) for name, w in weights.items()}


def stored_bytes(G, rank: int) -> int:
    """Bytes of one target's stored factors (float16) for generator ``G`` at ``rank``."""
    return sum(rank * (o + k) for o, k in factor_shapes(G).values()) * torch.finfo(STORED_DTYPE).bits // 8


def deltas(G, a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Per layer the weight deltas ``[B, O, I, k, k]`` from factors ``a [B, O, r]``, ``b [B, r, I*k*k]``."""
    shapes = {name: tuple(m.get_parameter("weight").shape) for name, m in modulated_layers(G.synthesis).items()}
    return {name: torch.bmm(a[name], b[name]).view(a[name].shape[0], *shapes[name]) for name in a}


def factors_from_latents(latents: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{"a": {layer: [O, r]}, "b": {layer: [r, K]}}`` from one target's ``latents.npz`` arrays
    (empty dicts when it was not tuned)."""
    out: Dict[str, Dict[str, torch.Tensor]] = {"a": {}, "b": {}}
    for key, value in latents.items():
        if key.startswith(FACTOR_PREFIX):
            layer, _, which = key[len(FACTOR_PREFIX):].rpartition(".")
            out[which][layer] = value.float()
    return out


Factors = Dict[str, Dict[str, torch.Tensor]]


def with_base(latents: Dict[str, torch.Tensor], base: Optional[Factors]) -> Dict[str, torch.Tensor]:
    """A result's latents with the tuning its start was found with folded in: a sum of low-rank
    deltas is one of their ranks added (``a`` side by side, ``b`` stacked), so the stored factors
    always render the result by themselves."""
    if not base or not base["a"]:
        return latents
    own = factors_from_latents(latents)
    out = {k: v for k, v in latents.items() if not k.startswith(FACTOR_PREFIX)}
    for layer in base["a"]:
        a, b = base["a"][layer], base["b"][layer]
        if layer in own["a"]:
            a, b = torch.cat([a, own["a"][layer]], dim=1), torch.cat([b, own["b"][layer]], dim=0)
        out[f"{FACTOR_PREFIX}{layer}.a"] = a.to(STORED_DTYPE)
        out[f"{FACTOR_PREFIX}{layer}.b"] = b.to(STORED_DTYPE)
    return out


def tuned(G, factors: Sequence[Optional[Factors]]):
    """A context in which ``G`` renders each target of a batch with its stored tuning (one
    :func:`factors_from_latents` per target; None or empty for an untuned one); a no-op when
    none is tuned. Refused when a target's factors do not fit ``G``."""
    some = next((f for f in factors if f and f["a"]), None)
    if some is None:
        return contextlib.nullcontext()
    device = next(G.parameters()).device
    shapes = factor_shapes(G)
    for f in factors:
        if f and f["a"]:
            if set(f["a"]) != set(shapes) or set(f["b"]) != set(shapes):
                raise ValueError("tuning factors are for another generator (their layers differ)")
            for k, (o, n) in shapes.items():
                a, b = f["a"][k], f["b"][k]
                if a.ndim != 2 or b.ndim != 2 or a.shape[0] != o or b.shape[1] != n or a.shape[1] != b.shape[0]:
                    raise ValueError(f"tuning factors of layer {k} do not fit this generator: "
                                     f"{list(a.shape)} x {list(b.shape)} for a {o} x {n} delta")

    def stacked(which: str) -> Dict[str, torch.Tensor]:
        return {k: torch.stack([f[which][k] if f and f["a"] else torch.zeros_like(some[which][k]) for f in factors])
                .to(device) for k in shapes}
    return per_target_weights(G.synthesis, deltas(G, stacked("a"), stacked("b")))


class TunedRun(Run):
    """A method's run followed by the tuning phase (``tune.steps`` steps, phase ``tune``).

    ``features``: ``img [-1, 1] -> [B, D]`` (the LPIPS distance is the squared L2 of features)."""

    def __init__(self, inner: Run, G, features: Callable[[torch.Tensor], torch.Tensor], cfg: TuneConfig,
                 targets: torch.Tensor, degradation, rngs, forward: Callable = contextlib.nullcontext):
        self.inner, self.G, self.features, self.cfg = inner, G, features, cfg
        self.forward = forward          # the context of a forward pass (the run's precision)
        self.degradation, self.rngs = degradation, list(rngs)
        self.targets = targets
        self.device = targets.device
        self.tune_step = 0
        self.total = inner.total + cfg.steps
        self.last_phase = "latent"
        self.a: Dict[str, torch.Tensor] = {}
        self.b: Dict[str, torch.Tensor] = {}
        self.optimizer: Optional[torch.optim.Optimizer] = None
        with torch.no_grad():
            self.target_features = features(targets)

    @property
    def step(self) -> int:        # type: ignore[override]
        return self.inner.step + self.tune_step

    # -- the factors ----------------------------------------------------------------------------

    def _begin(self) -> None:
        """Factors for every target: ``a`` zero (tuning starts from the generator as it is), ``b``
        a keyed standard normal draw of the target's own source."""
        B, r = self.targets.shape[0], self.cfg.rank
        for name, (o, k) in factor_shapes(self.G).items():
            self.a[name] = torch.zeros(B, o, r, device=self.device, requires_grad=True)
            b = torch.stack([rng.normal(-1, f"tune.{name}.b", (r, k)) for rng in self.rngs])
            self.b[name] = b.to(self.device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([*self.a.values(), *self.b.values()], lr=self.cfg.learning_rate)

    def _weights(self, a=None, b=None):
        return per_target_weights(self.G.synthesis, deltas(self.G, a or self.a, b or self.b))

    def _lpips_l2(self, x: torch.Tensor, y_features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((x.float() - y.float()).square().mean(dim=[1, 2, 3])
                + (self.features(x).float() - y_features.float()).square().sum(dim=1))

    def nearby(self, pivot: torch.Tensor, draws) -> torch.Tensor:
        """Latents around the pivot, shaped like it: ``pivot + reach * (w_z - pivot)``, ``w_z`` the
        w of a random face (one keyed draw per target and step)."""
        z = draws("tune.z", (self.G.z_dim,)).to(self.device)
        with torch.no_grad():
            w_z = self.G.mapping(z, None)[:, 0]
        w_z = w_z.view(w_z.shape[0], *([1] * (pivot.ndim - 2)), w_z.shape[-1])
        return pivot + self.cfg.locality_reach * (w_z - pivot)

    # -- the Run contract ------------------------------------------------------------------------

    def advance(self, draws):
        if self.inner.step < self.inner.total:
            phase, terms, scalars = self.inner.advance(draws)
            self.last_phase = phase
            return phase, terms, scalars
        if self.optimizer is None:
            self._begin()
        assert self.optimizer is not None
        pivot = self.inner.latent().detach()
        with self._weights(), self.forward():
            image = self.inner.synthesize(pivot)
            degraded = self.degradation(image, draws=draws) if self.degradation is not None else image
            dist = self._lpips_l2(degraded, self.target_features, self.targets)
            locality = torch.zeros_like(dist)
            if self.cfg.locality_weight > 0:
                near = self.nearby(pivot, draws)
                tuned_near = self.inner.synthesize(near)
        if self.cfg.locality_weight > 0:
            with torch.no_grad(), self.forward():
                original = self.inner.synthesize(near)
                original_features = self.features(original)
            with self.forward():
                locality = self._lpips_l2(tuned_near, original_features, original)
        loss = dist + self.cfg.locality_weight * locality
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.optimizer.step()
        self.tune_step += 1
        return "tune", dict(loss=loss, dist=dist, locality=locality), dict(lr=self.cfg.learning_rate)

    def latent(self) -> torch.Tensor:
        return self.inner.latent()

    def synthesize(self, latent: torch.Tensor) -> torch.Tensor:
        with self._weights() if self.a else contextlib.nullcontext():
            return self.inner.synthesize(latent)

    @torch.no_grad()
    def render(self) -> torch.Tensor:
        return self.synthesize(self.latent())

    def state_dict(self) -> Dict[str, Any]:
        return dict(inner=self.inner.state_dict(), tune_step=self.tune_step, last_phase=self.last_phase,
                    a={k: v.detach().cpu() for k, v in self.a.items()},
                    b={k: v.detach().cpu() for k, v in self.b.items()},
                    optimizer=self.optimizer.state_dict() if self.optimizer is not None else None)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.tune_step, self.last_phase = int(state["tune_step"]), state["last_phase"]
        if state["optimizer"] is not None:
            self.a = {k: v.to(self.device).requires_grad_(True) for k, v in state["a"].items()}
            self.b = {k: v.to(self.device).requires_grad_(True) for k, v in state["b"].items()}
            self.optimizer = torch.optim.Adam([*self.a.values(), *self.b.values()], lr=self.cfg.learning_rate)
            self.optimizer.load_state_dict(state["optimizer"])

    def finish(self) -> List[Dict[str, Any]]:
        """The method's results with the tuned image (rendered from the factors as stored, in
        float16), the image before tuning as the phase image of the method's last phase, and the
        factors in ``latents`` under ``tune/<layer>.a`` and ``.b``."""
        out = self.inner.finish()
        if self.optimizer is None:
            self._begin()
        a = {k: v.detach().to(STORED_DTYPE).float() for k, v in self.a.items()}
        b = {k: v.detach().to(STORED_DTYPE).float() for k, v in self.b.items()}
        with torch.no_grad(), self._weights(a, b):
            image = self.inner.synthesize(self.latent())
        with torch.no_grad():
            degraded = self.degradation(image) if self.degradation is not None else image
        for i, res in enumerate(out):
            res["phase_images"] = {**res.get("phase_images", {}), self.last_phase: res["image"]}
            res["image"], res["degraded"] = image[i].cpu(), degraded[i].cpu()
            res["latents"] = {**res["latents"],
                              **{f"{FACTOR_PREFIX}{k}.a": v[i].to(STORED_DTYPE).cpu() for k, v in a.items()},
                              **{f"{FACTOR_PREFIX}{k}.b": v[i].to(STORED_DTYPE).cpu() for k, v in b.items()}}
        return out
