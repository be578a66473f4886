"""The degradation's unknowns, estimated with each target's latent (a blur's ``sigma: auto``).

A photo that is already blurry gives no sigma. Here each target's sigma is one more parameter of
its restoration: an unconstrained value ``u`` per target, mapped into the op's range log-uniformly,
``sigma = low * (high / low) ** sigmoid(u)`` (so it never leaves the range and moves by ratios),
starting at ``u = 0`` (the range's geometric middle), optimized by Adam (:data:`LEARNING_RATE` on
``u``) on the method's own loss, one step per method step. Every method gets this through the
restoration contract (:meth:`recon.restore.method.Method.restore` binds the estimates to the
degradation the method's run calls; the method does not know): each target has its own values and
Adam state, so a result does not depend on its batch; snapshots carry them, so a resumed run goes on
exactly; the history has a column per unknown, and the result keeps the final values
(``Restoration.estimates``, ``latents.npz`` under ``estimate/<key>``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

LEARNING_RATE = 0.05
ESTIMATE_PREFIX = "estimate/"


class Estimates:
    """One batch's unknowns: ``raw[key]`` ``[B]`` (unconstrained) for each unknown of
    ``degradation.unknowns``, and their optimizer."""

    def __init__(self, degradation, batch: int, device, learning_rate: float = LEARNING_RATE):
        self.specs = degradation.unknowns
        self.raw = {key: torch.zeros(batch, device=device, requires_grad=True) for key, *_ in self.specs}
        self.learning_rate = learning_rate
        self.optimizer = torch.optim.Adam(list(self.raw.values()), lr=learning_rate)

    def values(self) -> Dict[str, torch.Tensor]:
        """Each unknown's current value per target, ``[B]``, differentiable in ``raw``."""
        out = {}
        for key, _, _, low, high in self.specs:
            out[key] = low * (high / low) ** torch.sigmoid(self.raw[key])
        return out

    def params(self) -> Dict[int, Dict[str, torch.Tensor]]:
        """The values as :meth:`recon.restore.degrade.Degradation.__call__` takes them: op index ->
        parameter -> ``[B]``."""
        values = self.values()
        out: Dict[int, Dict[str, torch.Tensor]] = {}
        for key, index, param, _, _ in self.specs:
            out.setdefault(index, {})[param] = values[key]
        return out

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """One Adam step on what the method's last backward pass left in ``raw``'s gradients (none:
        this step's loss did not depend on them, nothing moves)."""
        if any(r.grad is not None for r in self.raw.values()):
            self.optimizer.step()

    def per_target(self) -> List[Dict[str, float]]:
        values = {k: v.detach().cpu() for k, v in self.values().items()}
        batch = next(iter(self.raw.values())).shape[0] if self.raw else 0
        return [{k: float(v[i]) for k, v in values.items()} for i in range(batch)]

    def state_dict(self) -> Dict[str, Any]:
        return dict(raw={k: v.detach().cpu() for k, v in self.raw.items()}, optimizer=self.optimizer.state_dict())

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state["raw"]) != set(self.raw):
            raise ValueError(f"estimates of {sorted(state['raw'])}, this run estimates {sorted(self.raw)}")
        for k, v in state["raw"].items():
            if v.shape != self.raw[k].shape:
                raise ValueError(f"estimate {k} of shape {list(v.shape)}, this run's is {list(self.raw[k].shape)}")
            with torch.no_grad():
                self.raw[k].copy_(v)
        self.optimizer = torch.optim.Adam(list(self.raw.values()), lr=self.learning_rate)
        self.optimizer.load_state_dict(state["optimizer"])


class Estimated:
    """A degradation with its unknowns filled in by ``estimates`` (their current values, with
    their gradients): what a method's run calls, as it would call the degradation itself."""

    def __init__(self, degradation, estimates: Estimates):
        self.inner, self.estimates = degradation, estimates

    def __getattr__(self, name):            # size, observed_size, stochastic, known, masks, ...
        return getattr(self.inner, name)

    def __call__(self, img: torch.Tensor, batch_index=None, draws=None) -> torch.Tensor:
        return self.inner(img, batch_index=batch_index, draws=draws, params=self.estimates.params())

    def repeated(self, times: int):
        raise ValueError("estimates are bound per batch, after the samples are repeated")


def bind(degradation, batch: int, device) -> "tuple[Any, Optional[Estimates]]":
    """``(degradation to run, estimates or None)``: ``degradation`` bound to a new batch's
    estimates when it has unknowns, else itself."""
    if degradation is None or not getattr(degradation, "unknowns", None):
        return degradation, None
    est = Estimates(degradation, batch, device)
    return Estimated(degradation, est), est
