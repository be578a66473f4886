"""Image-quality and identity metrics that need no downloaded weights, and their meanings.

All image inputs are ``uint8 [H, W, 3]`` arrays (what the pipeline writes); masks are boolean
``[H, W]`` arrays selecting the pixels to score.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """PSNR in dB (peak 255); over ``mask`` pixels only when given; inf for identical images."""
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        d = d[np.asarray(mask, dtype=bool)]
    mse = float(d.mean()) if d.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def at_size(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` (uint8 ``[h, w, 3]``) at ``size`` x ``size``: a smaller observation bicubic-upscaled,
    the naive baseline a restoration of it is compared with; unchanged when already that size."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of Wang et al. 2004 (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), averaged
    over the RGB channels: scikit-image's ``structural_similarity`` with the paper's settings."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=255))


_FACE_NET: Dict[str, Any] = {}


def _face_models():
    if not _FACE_NET:
        import dlib

        from .data.align import model_path
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


IDENTITY_THRESHOLD = 0.6   # dlib's own: distances below it are the same person


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of dlib face embeddings (same person below :data:`IDENTITY_THRESHOLD`)."""
    return float(np.linalg.norm(face_descriptor(a) - face_descriptor(b)))


class LPIPSMetric:
    """LPIPS-VGG between two ``uint8 [H, W, 3]`` images, with NVIDIA's ``vgg16.pt``."""

    def __init__(self, vgg, device: str = "cpu"):
        """``vgg``: NVIDIA's VGG16 module, or the path of ``vgg16.pt``."""
        from .model.perceptual import VGGLPIPS, load_vgg16

        if isinstance(vgg, (str, Path)):
            vgg = load_vgg16(vgg, device)
        self.lpips, self.device = VGGLPIPS(vgg), device

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        import torch

        from .model.perceptual import MIN_VGG_SIDE

        def t(img):
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float().to(self.device) / 255
            if x.shape[-1] < MIN_VGG_SIDE:          # a small observation: VGG16 needs 32 px
                x = torch.nn.functional.interpolate(x, size=(MIN_VGG_SIDE, MIN_VGG_SIDE), mode="bilinear")
            return x
        with torch.no_grad():
            return float(self.lpips(t(a), t(b))[0])


# What each number in the report and metrics.json means: (label, unit, better, meaning).
GLOSSARY = {
    "psnr": ("PSNR", "dB", "higher", "peak signal-to-noise ratio of the generated face against the undegraded "
             "original (8-bit, whole image)"),
    "ssim": ("SSIM", "", "higher", "structural similarity to the original, 0 to 1 (Wang et al. 2004, 11 px "
             "Gaussian window)"),
    "lpips": ("LPIPS", "", "lower", "learned perceptual distance (LPIPS-VGG, NVIDIA's vgg16.pt) of the generated "
              "face to the undegraded original; 0 = identical"),
    "lpips_consistency": ("consistency LPIPS", "", "lower", "LPIPS between the generated face degraded again and "
                          "the degraded target"),
    "psnr_degraded_input": ("PSNR of the input", "dB", "higher", "the degraded target (bicubic-upscaled when "
                            "smaller) against the original: the baseline that a restoration should beat"),
    "lpips_degraded_input": ("LPIPS of the input", "", "lower", "the degraded target (bicubic-upscaled when "
                             "smaller) against the original: the baseline that a restoration should beat"),
    "consistency_psnr": ("consistency PSNR", "dB", "higher", "the generated face degraded again against the "
                         "degraded target, over known pixels: how well the result explains what was observed"),
    "psnr_mask": ("PSNR in the hole", "dB", "higher", "PSNR against the original inside the missing region only"),
    "psnr_composited": ("composited PSNR", "dB", "higher", "PSNR of the result combined with what the input "
                        "knows (known pixels pasted back, or the input's luminance with the generated colour)"),
    "psnr_samples_min": ("PSNR, worst sample", "dB", "higher", "the lowest PSNR against the original of the "
                         "posterior samples: with the best, the spread of plausible restorations"),
    "psnr_samples_max": ("PSNR, best sample", "dB", "higher", "the highest PSNR against the original of the "
                         "posterior samples (which one is unknown without the original)"),
    "uncertainty": ("uncertainty", "", "lower", "the per-pixel standard deviation of the posterior samples "
                    "(range [-1, 1]), averaged over the image: how much the observation leaves open"),
    "identity": ("identity distance", "", "lower", "distance of dlib face embeddings of result and original; "
                 f"below {IDENTITY_THRESHOLD} dlib calls them the same person"),
    "seconds": ("s", "s", "lower", "seconds per restoration in the benchmark, on the machine that ran it"),
    "lpips_wins": ("rows won (LPIPS)", "", "higher", "in how many of the benchmark's rows (task and level) the "
                   "method had the lowest LPIPS"),
    "sigma": ("blur found", "px", "–", "the Gaussian blur's sigma estimated with the face (sigma: auto), in pixels "
              "at the generator's resolution"),
    "face_px": ("face in the photo", "px", "–", "how many photo pixels the side of the face's crop covers (the "
                "alignment's quad): the face's real resolution, before it was resampled to the generator's"),
    "grayscale_found": ("grayscale found", "", "–", "1 when the photo's channels agree within the tolerance "
                        "(type: auto added the grayscale operation), 0 when not"),
    "observation_px": ("observed at", "px", "–", "the size the restoration compared the generated face at: the "
                       "face's own sampling, a power of two at or below its size in the photo (factor: auto)"),
}
