"""Free fidelity: combine the restoration with what the input still knows.

* Inpainting (BRGM): known pixels come from the input, the hole from the generator, blended with a
  feathered mask so no seam shows.
* Colorization (mGANprior): the input's luminance with the generator's colour.
Inputs and outputs are ``uint8 [H, W, 3]``; ``hole`` is boolean ``[H, W]`` (True = missing).
"""
from __future__ import annotations

import numpy as np

from .degrade import LUMA


def paste_known(generated: np.ndarray, observed: np.ndarray, hole: np.ndarray, feather: float = 0.02) -> np.ndarray:
    """Generated pixels inside the hole, observed ones outside, over a ramp of ``feather`` x size."""
    from scipy.ndimage import distance_transform_edt

    width = max(1.0, feather * hole.shape[0])
    inside = distance_transform_edt(hole)          # distance into the hole from the known region
    alpha = np.clip(inside / width, 0.0, 1.0)[..., None]
    out = observed.astype(np.float64) * (1 - alpha) + generated.astype(np.float64) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def transfer_luminance(generated: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Keep the observed luminance (0.299 R + 0.587 G + 0.114 B of ``gray``) and the generated colour."""
    w = np.asarray(LUMA)
    gen = generated.astype(np.float64)
    y_gen = gen @ w
    y_obs = gray.astype(np.float64) @ w
    out = gen + (y_obs - y_gen)[..., None]          # shift every channel: luminance becomes y_obs
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def composite_for(ops):
    """``(what, combine)`` for a mode's typed ops where the input tells something the result should
    keep: inpainting (a mask alone) pastes the known pixels back, colorization (grayscale alone)
    keeps the input's luminance; ``combine(generated, observed, hole)``. None for other modes."""
    from recon.config import GrayscaleOp, MaskOp

    if len(ops) == 1 and isinstance(ops[0], MaskOp):
        return "known pixels pasted back", paste_known
    if len(ops) == 1 and isinstance(ops[0], GrayscaleOp):
        return "input luminance, generated colour", lambda generated, observed, hole: transfer_luminance(generated,
                                                                                                          observed)
    return None
