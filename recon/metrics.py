"""Image-quality and identity metrics that need no downloaded weights.

All image inputs are ``uint8 [H, W, 3]`` arrays (what the pipeline writes); masks are boolean
``[H, W]`` arrays selecting the pixels to score.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """PSNR in dB (peak 255); over ``mask`` pixels only when given; inf for identical images."""
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        d = d[np.asarray(mask, dtype=bool)]
    mse = float(d.mean()) if d.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), averaged
    over RGB channels, on the valid region (no padding)."""
    from scipy.ndimage import correlate1d

    win = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    half = len(win) // 2
    scores = []
    for ch in range(a.shape[2]):
        x = a[..., ch].astype(np.float64)
        y = b[..., ch].astype(np.float64)

        def blur(z):
            z = correlate1d(z, win, axis=0, mode="constant")
            z = correlate1d(z, win, axis=1, mode="constant")
            return z[half:-half, half:-half] if min(z.shape) > 2 * half else z

        mx, my = blur(x), blur(y)
        sxx = blur(x * x) - mx * mx
        syy = blur(y * y) - my * my
        sxy = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        scores.append(float(s.mean()))
    return float(np.mean(scores))


_FACE_NET = {}


def _face_models():
    if not _FACE_NET:
        import dlib
        from .align import model_path
        _FACE_NET["sp"] = dlib.shape_predictor(str(model_path("shape_predictor_5_face_landmarks.dat")))
        _FACE_NET["net"] = dlib.face_recognition_model_v1(str(model_path("dlib_face_recognition_resnet_model_v1.dat")))
    return _FACE_NET["sp"], _FACE_NET["net"]


def face_descriptor(aligned: np.ndarray) -> np.ndarray:
    """dlib's 128-D face embedding of an FFHQ-aligned face.

    Faces are aligned, so the face box is fixed in aligned space (no detector that could miss a
    degraded face): the central region that FFHQ's crop puts the face in."""
    import dlib

    sp, net = _face_models()
    s = aligned.shape[0]
    img = np.ascontiguousarray(aligned)
    if s < 150:  # dlib's chip is 150 px: give it enough pixels
        from PIL import Image
        img = np.asarray(Image.fromarray(img).resize((256, 256), Image.Resampling.BICUBIC))
        s = 256
    box = dlib.rectangle(int(0.22 * s), int(0.28 * s), int(0.78 * s), int(0.84 * s))
    shape = sp(img, box)
    return np.array(net.compute_face_descriptor(img, shape), dtype=np.float64)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of dlib face embeddings (same person below about 0.6)."""
    return float(np.linalg.norm(face_descriptor(a) - face_descriptor(b)))
