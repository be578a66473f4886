"""Decode photos once, the same way for detection and alignment; write images atomically.

Value ranges: decoded photos are ``uint8 [H, W, 3]`` RGB arrays in [0, 255].
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from recon.errors import PhotoError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
DEFAULT_MAX_PIXELS = 120_000_000  # ~11000 x 11000: bigger inputs are refused, not decoded


def _to_uint8_gray(arr: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth single-channel array to 8 bits instead of clipping it."""
    arr = arr.astype(np.float64)
    hi = float(arr.max()) if arr.size else 0.0
    if hi <= 1.0 and arr.dtype.kind == "f":
        arr = arr * 255.0
    elif hi > 255.0:
        arr = arr * (255.0 / 65535.0)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Tuple[np.ndarray, dict]:
    """Convert any Pillow image to ``uint8 [H, W, 3]`` RGB; returns the array and what was done."""
    notes: Dict[str, Any] = {"mode": img.mode}
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_uint8_gray(np.asarray(img))
        notes["scaled_from"] = img.mode
        return np.repeat(gray[:, :, None], 3, axis=2), notes
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3]
        if alpha.min() < 255:
            base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
            rgba = Image.alpha_composite(base, rgba)
            notes["composited_alpha"] = True
        return np.asarray(rgba.convert("RGB")).copy(), notes
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img).copy(), notes


def load_photo(path, max_pixels: int = DEFAULT_MAX_PIXELS, background=(255, 255, 255)):
    """Decode a photo: EXIF orientation applied, first frame, 8-bit RGB.

    Returns ``(rgb uint8 [H, W, 3], info)`` with ``info`` holding the size after orientation, the
    original mode, the EXIF orientation and the number of frames. Raises :class:`PhotoError` for
    unreadable, truncated, non-image or oversized files.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check is replaced by ours: open() reads only the header, and the
            # size is checked against max_pixels before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                with Image.open(path) as img:
                    w, h = img.size
                    if w * h > max_pixels:
                        raise PhotoError(f"{path}: {w}x{h} pixels exceeds the limit of {max_pixels} "
                                         "(raise align.max_pixels to allow it)")
                    frames = getattr(img, "n_frames", 1)
                    img.seek(0)
                    orientation = img.getexif().get(0x0112)
                    img.load()
                    rgb, notes = to_rgb(ImageOps.exif_transpose(img), background)
            finally:
                Image.MAX_IMAGE_PIXELS = old_limit
    except PhotoError:
        raise
    except UnidentifiedImageError as exc:
        raise PhotoError(f"{path}: not an image file Pillow can read") from exc
    except FileNotFoundError as exc:
        raise PhotoError(f"{path}: no such file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise PhotoError(f"{path}: cannot decode image (truncated or corrupt: {exc})") from exc
    info = dict(size=[int(rgb.shape[1]), int(rgb.shape[0])], exif_orientation=orientation, frames=int(frames),
                **notes)
    return rgb, info


def list_photos(inputs) -> list:
    """Expand files and directories into a sorted list of image paths (mask files excluded)."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir()
                              if q.suffix.lower() in IMAGE_SUFFIXES and not q.stem.endswith("_mask")))
        elif p.exists():
            out.append(p)
        else:
            raise PhotoError(f"{p}: no such file or directory")
    return out


def _umask() -> int:
    mask = os.umask(0o022)      # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def write_atomic(path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)``, flush it to disk, then rename it into place, so no half-written
    file ever looks valid. The file gets the permissions of a plain ``open`` (0666 less the
    umask), not the private 0600 of the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path, data) -> Path:
    """``data`` as JSON (sorted keys), atomically."""
    import json

    text = json.dumps(data, indent=1, sort_keys=True)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def save_npz(path, arrays) -> Path:
    """``{name: array}`` as an uncompressed ``.npz`` (what ``numpy.load`` reads), atomically, with
    bytes that depend on the arrays only: ``numpy.savez`` stamps each member with the time of
    writing, so the same result written twice would differ."""
    import zipfile

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with z.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
    return write_atomic(path, write)


def save_png(path, rgb: np.ndarray) -> Path:
    """Write ``uint8 [H, W, 3]`` (or ``[H, W]``) losslessly as PNG, atomically."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    return write_atomic(path, lambda tmp: img.save(tmp, format="PNG"))


# Value-range conversions between files (uint8) and the generator's float range [-1, 1]

def to_uint8(img: torch.Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` in [-1, 1] -> ``uint8 [N, H, W, 3]`` (round half up, clipped)."""
    x = (img.detach().float().cpu() + 1) * 127.5
    return x.clamp(0, 255).add(0.5).floor().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` or ``[N, H, W, 3]`` -> float ``[N, 3, H, W]`` in [-1, 1]."""
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[None]
    return torch.from_numpy(a.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1
