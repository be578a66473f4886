"""Restoration: methods behind one contract (:mod:`.method`), degradations (:mod:`.degrade`) and
their randomness (:mod:`.randomness`). Callers make methods through :func:`make_method` and never
branch on which one they hold."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Type, Union

from .registry import METHODS

if TYPE_CHECKING:
    from recon.config import ProjectorConfig

    from .method import Method


def method_class(which: Union[str, "ProjectorConfig"]) -> Type["Method"]:
    """The method class of a name, or of a config's ``method``."""
    name = which if isinstance(which, str) else which.method
    if name not in METHODS:
        raise ValueError(f"unknown restoration method {name!r}; one of {', '.join(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_method(G, vgg, cfg: "ProjectorConfig", compile=False, precision: str = "fp32", planned=None,
                say=None) -> "Method":
    """The method ``cfg.method`` on generator ``G`` with NVIDIA's VGG16 module ``vgg``;
    ``compile``: ``torch.compile`` its step where the method supports it (``"auto"``: when it pays
    for the steps ``planned()``, said with ``say``: :mod:`recon.restore.compiled`); ``precision``:
    the arithmetic of its steps (:mod:`recon.restore.precision`: fp32, tf32 or bf16, resolved)."""
    from .precision import unavailable

    cls = method_class(cfg)
    kwargs = dict(compile=compile, planned=planned, say=say or (lambda s: None)) if cls.compilable else {}
    method = cls(G, cls.perceptual_from_vgg(vgg), cfg, **kwargs)
    problem = unavailable(precision, method.device)
    if problem:
        raise ValueError(f"precision {precision}: {problem}")
    method.precision = precision
    if cfg.tune.steps:
        from recon.model.perceptual import VGGFeatures
        method.tune_features = VGGFeatures(vgg)
    return method


__all__ = ["METHODS", "make_method", "method_class"]
