"""Randomness of a restoration: one stream per target, behind a seam so that recorded draws can be
replayed (the tests replay the official projector's recorded run through it).

A random source offers three kinds of draws (and independent child sources, one per posterior
sample): ``noise_init`` (a method's starting noise maps) and
``w_noise_unit`` (one draw per step), both from the source's main stream in the official order,
and ``normal(step, tag, shape)``, keyed draws that do not move the main stream, for anything a
step needs afresh (a stochastic degradation, the robust loss's hole noise), so that a resumed run
or another batch gets the same values.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Dict, Optional, Protocol, Sequence

import torch

Draws = Callable[[str, tuple], torch.Tensor]     # (tag, per-target shape) -> [B, *shape]


class RandomSource(Protocol):
    def normal(self, step: int, tag: str, shape) -> torch.Tensor: ...
    def noise_init(self, name: str, shape) -> torch.Tensor: ...
    def w_noise_unit(self, step: int, shape) -> torch.Tensor: ...
    def get_state(self) -> torch.Tensor: ...
    def set_state(self, state: torch.Tensor) -> None: ...
    def child(self, tag: str) -> "RandomSource": ...


class TorchRandom:
    """Draws from a CPU ``torch.Generator`` (the same on every device), in the official order:
    the noise maps in state_dict order, then one w-noise draw per step."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)

    def normal(self, step: int, tag: str, shape) -> torch.Tensor:
        """Standard normal draws for ``tag`` at ``step``, from their own generator keyed by
        (seed, step, tag)."""
        key = hashlib.sha256(f"{self.seed}/{int(step)}/{tag}".encode()).digest()
        return torch.randn(shape, generator=torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1))

    def noise_init(self, name: str, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)

    def w_noise_unit(self, step: int, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)

    def child(self, tag: str) -> "TorchRandom":
        """An independent source keyed by (seed, tag): one posterior sample's, for example."""
        key = hashlib.sha256(f"{self.seed}/child/{tag}".encode()).digest()
        return TorchRandom(int.from_bytes(key[:4], "little"))

    def get_state(self) -> torch.Tensor:
        return self.gen.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)


class RecordedRandom:
    """Replays recorded draws (``noise_init[name]``, ``w_noise_unit[step]`` and keyed ``normal``
    draws ``normals[step, tag]``), an official run's for example, through the random-source
    interface: what the fixtures' recorded runs are replayed with."""

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

    def child(self, tag: str) -> "RecordedRandom":
        raise ValueError("recorded draws have no child sources")

    def get_state(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.uint8)

    def set_state(self, state) -> None:
        pass


def step_draws(rngs: Sequence[RandomSource], step: int) -> Draws:
    """The fresh randomness of one step: ``draws(tag, shape)`` -> ``[B, *shape]``, row i from
    target i's own source."""
    return lambda tag, shape: torch.stack([r.normal(step, tag, shape) for r in rngs])
