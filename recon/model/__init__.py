"""The networks and their files: NVIDIA's StyleGAN2 generator (:mod:`.networks`, its custom ops in
:mod:`.ops`), checkpoints read safely (:mod:`.checkpoint`, :mod:`.safe_pickle`), NVIDIA's VGG16
perceptual networks (:mod:`.perceptual`) and where the weights come from (:mod:`.weights`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Tuple

import torch

if TYPE_CHECKING:
    from .networks import Generator


def load_models(weights, device) -> Tuple["Generator", torch.jit.ScriptModule]:
    """``(G, vgg)``: the generator (eval mode, no gradients) and NVIDIA's VGG16 module of
    ``weights`` (a download_weights folder, a ``(generator, vgg16)`` pair of paths, or resolved
    :class:`recon.model.weights.WeightFiles`), on ``device``."""
    from .checkpoint import load_generator
    from .perceptual import load_vgg16
    from .weights import WeightFiles, resolve_weights

    files = weights if isinstance(weights, WeightFiles) else resolve_weights(weights)
    return load_generator(files.generator, device=device), load_vgg16(files.vgg16, device)
