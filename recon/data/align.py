"""FFHQ alignment of real photos (dlib detection + 68 landmarks + NVIDIA's FFHQ crop), and its inverse.

Coordinates follow dlib's pixel-centre convention: pixel (i, j) has its centre at x=i, y=j. The
quad's corners are, in order, the face's top-left, bottom-left, bottom-right and top-right. An
aligned pixel (u, v) of an S x S face samples the photo at
``q0 + (u+0.5)/S * (q3-q0) + (v+0.5)/S * (q1-q0)``; :func:`paste_back` inverts that map.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from recon.config import Align
from recon.errors import AlignError

from .imageio import PhotoError, list_photos, load_photo, save_png, write_atomic

# ----------------------------------------------------------------------------------------------
# dlib models (shipped in the PyPI package face_recognition_models)

def model_path(name: str) -> Path:
    """Path of a model file inside ``face_recognition_models`` (located without importing it:
    its ``__init__`` needs ``pkg_resources``, which new setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face_recognition_models is not installed (pip install face_recognition_models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise RuntimeError(f"{path}: model file missing from face_recognition_models")
    return path


_MODELS: Dict[str, Any] = {}


def _dlib_model(kind: str):
    if kind not in _MODELS:
        import dlib
        if kind == "hog":
            _MODELS[kind] = dlib.get_frontal_face_detector()
        elif kind == "cnn":
            _MODELS[kind] = dlib.cnn_face_detection_model_v1(str(model_path("mmod_human_face_detector.dat")))
        elif kind == "landmarks68":
            _MODELS[kind] = dlib.shape_predictor(str(model_path("shape_predictor_68_face_landmarks.dat")))
        else:
            raise ValueError(kind)
    return _MODELS[kind]


@dataclass
class Detection:
    box: List[int]           # [left, top, right, bottom], right/bottom inclusive (dlib)
    score: float
    detector: str
    subdetector: int = -1

    @property
    def centre(self):
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


def detect_faces(rgb: np.ndarray, detector: str = "hog", upsample: int = 1, min_score: float = 0.5,
                 max_side: int = 4096) -> List[Detection]:
    """Find faces, sorted left to right (box centre x, ties by y), dropping scores below ``min_score``.

    Photos larger than ``max_side`` are searched on a downscaled copy (boxes scaled back), so huge
    inputs cannot exhaust memory; smaller photos are searched as they are.
    """
    scale = 1.0
    search = rgb
    if max(rgb.shape[:2]) > max_side:
        scale = max(rgb.shape[:2]) / max_side
        size = (max(1, round(rgb.shape[1] / scale)), max(1, round(rgb.shape[0] / scale)))
        search = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    search = np.ascontiguousarray(search)
    found = []
    if detector == "hog":
        rects, scores, subs = _dlib_model("hog").run(search, upsample, 0.0)
        found = [(r, float(s), int(k)) for r, s, k in zip(rects, scores, subs)]
    elif detector == "cnn":
        found = [(d.rect, float(d.confidence), -1) for d in _dlib_model("cnn")(search, upsample)]
    else:
        raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
    dets = []
    for rect, score, sub in found:
        if score < min_score:
            continue
        box = [int(round(v * scale)) for v in (rect.left(), rect.top(), rect.right(), rect.bottom())]
        dets.append(Detection(box, score, detector, sub))
    dets.sort(key=lambda d: (d.centre[0], d.centre[1]))
    return dets


def landmarks68(rgb: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """dlib's 68 landmarks ``[68, 2]`` (integer pixel coordinates) inside a detection box."""
    import dlib
    rect = dlib.rectangle(*[int(v) for v in box])
    shape = _dlib_model("landmarks68")(np.ascontiguousarray(rgb), rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# The FFHQ crop

def ffhq_quad(lm: np.ndarray):
    """Oriented crop square from 68 landmarks: ``(quad [4, 2], qsize)`` in photo pixels."""
    lm = np.asarray(lm, dtype=np.float64)
    if lm.shape != (68, 2) or not np.isfinite(lm).all():
        raise AlignError(f"expected 68 finite landmarks, got shape {lm.shape}")
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    if np.hypot(*eye_to_eye) < 2.0 or np.hypot(*eye_to_mouth) < 2.0:
        raise AlignError(f"degenerate landmarks: eye distance {np.hypot(*eye_to_eye):.2f} px, "
                         f"eye-mouth distance {np.hypot(*eye_to_mouth):.2f} px")

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise AlignError("degenerate landmarks: eye and mouth axes cancel out")
    x /= norm
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


@dataclass
class AlignedFace:
    image: np.ndarray            # uint8 [S, S, 3]
    quad: np.ndarray             # [4, 2] in original photo pixels
    qsize: float
    shrink: int
    border: int
    crop: List[int]
    pad_needed: List[int]
    pad_applied: List[int] = field(default_factory=lambda: [0, 0, 0, 0])

    @property
    def padded(self) -> bool:
        return max(self.pad_applied) > 0


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(img, [sigma, sigma, 0])


def align_face(rgb: np.ndarray, lm: np.ndarray, output_size: int = 1024, transform_size: int = 4096,
               enable_padding: bool = True) -> AlignedFace:
    """NVIDIA's FFHQ alignment (``recreate_aligned_images``) of one face, on a decoded RGB photo."""
    quad, qsize = ffhq_quad(lm)
    quad_orig, qsize_orig = quad.copy(), qsize
    img = Image.fromarray(rgb)

    # Shrink huge faces first (the quirk of using floor(qsize/size/2) is kept on purpose).
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
           int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    pad_needed = [int(p) for p in pad]
    pad_applied = [0, 0, 0, 0]
    if enable_padding and max(pad) > border - 4:
        grown = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.asarray(img, dtype=np.float32), ((grown[1], grown[3]), (grown[0], grown[2]), (0, 0)),
                     "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / grown[0], np.float32(w - 1 - xx) / grown[2]),
                          1.0 - np.minimum(np.float32(yy) / grown[1], np.float32(h - 1 - yy) / grown[3]))
        blur = qsize * 0.02
        arr += (_gaussian_blur(arr, blur) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += grown[:2]
        pad_applied = [int(p) for p in grown]

    # Pillow samples at pixel edges, dlib's landmarks are pixel centres: hence the +0.5.
    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten(),
                        Image.Resampling.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return AlignedFace(np.asarray(img).copy(), quad_orig, qsize_orig, shrink, border, [int(c) for c in crop],
                       pad_needed, pad_applied)


# ----------------------------------------------------------------------------------------------
# Inverse: paste an aligned-space image back into the photo

def paste_back(photo: np.ndarray, face: np.ndarray, quad: np.ndarray, feather: float = 0.05,
               mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Warp an aligned ``face [S, S, 3]`` back into ``photo [H, W, 3]`` through ``quad``.

    The face is first low-passed (LANCZOS resize) to twice its size in the photo, so the warp does
    not alias, then sampled bicubically at every photo pixel centre inside the quad (an unchanged
    aligned face comes back at 37-47 dB on the sample photos, where resizing to 1x loses 3-9 dB); a
    mask that ramps from 0 at the quad's edge to 1 at ``feather`` (fraction of the side) inside
    blends it in without seams. An optional ``mask [S, S]`` in [0, 1] restricts the paste further
    (e.g. to the restored region).
    Returns a new uint8 photo.
    """
    import torch
    import torch.nn.functional as F

    quad = np.asarray(quad, dtype=np.float64)
    q0, q1, q3 = quad[0], quad[1], quad[3]
    side = float(np.hypot(*(q3 - q0)))
    h, w = photo.shape[:2]
    x0 = max(int(np.floor(quad[:, 0].min())) - 1, 0)
    x1 = min(int(np.ceil(quad[:, 0].max())) + 2, w)
    y0 = max(int(np.floor(quad[:, 1].min())) - 1, 0)
    y1 = min(int(np.ceil(quad[:, 1].max())) + 2, h)
    out = photo.copy()
    if x1 <= x0 or y1 <= y0:
        return out

    size = int(min(max(round(2 * side), 8), face.shape[0]))
    small = face if size == face.shape[0] else np.asarray(
        Image.fromarray(face).resize((size, size), Image.Resampling.LANCZOS))
    layers = [torch.from_numpy(np.array(small, dtype=np.float64)).permute(2, 0, 1)]
    if mask is not None:
        m = Image.fromarray(np.uint8(np.clip(mask, 0, 1) * 255)).resize((size, size), Image.Resampling.BILINEAR)
        layers.append(torch.from_numpy(np.asarray(m, dtype=np.float64) / 255.0)[None])
    src = torch.cat(layers, 0)[None]

    # Unit-square coordinates t of each photo pixel centre: p = q0 + t_x (q3-q0) + t_y (q1-q0).
    A = np.stack([q3 - q0, q1 - q0], axis=1)
    Ainv = np.linalg.inv(A)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    rel = np.stack([xs - q0[0], ys - q0[1]], axis=-1)
    t = rel @ Ainv.T
    grid = torch.from_numpy(t * 2 - 1)[None]
    warped = F.grid_sample(src, grid, mode="bicubic", padding_mode="border", align_corners=False)[0]

    edge = np.minimum(np.minimum(t[..., 0], 1 - t[..., 0]), np.minimum(t[..., 1], 1 - t[..., 1]))
    alpha = np.clip(edge / max(feather, 1e-6), 0.0, 1.0)
    alpha = alpha * alpha * (3 - 2 * alpha)  # smoothstep: no visible ramp edge
    if mask is not None:
        alpha = alpha * np.clip(warped[3].numpy(), 0.0, 1.0)
    rgb = warped[:3].permute(1, 2, 0).numpy()
    region = out[y0:y1, x0:x1].astype(np.float64)
    blended = region + (rgb - region) * alpha[..., None]
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------------------------
# Whole photos and folders

TRANSFORM_SIZE = 4096       # the official crop is warped at 4096 px, then reduced to 1024
DETECT_MAX_SIDE = 4096      # photos are shrunk to this for detection (landmarks use the full photo)


def transform_size(resolution: int) -> int:
    """4x supersampling as the official 1024 <- 4096, never below the output size."""
    return max(resolution, min(TRANSFORM_SIZE, 4 * resolution))


def _select(dets: List[Detection], opts: Align) -> List[Detection]:
    if opts.largest_only and dets:
        dets = [max(dets, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))]
    if opts.max_faces and len(dets) > opts.max_faces:
        keep = sorted(dets, key=lambda d: -d.score)[: opts.max_faces]
        dets = [d for d in dets if d in keep]
    return dets


def align_mask(mask: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Warp a photo-space mask (uint8, white = missing) into a face's aligned space: ``uint8 [S, S]``.
    Outside the photo counts as known (black)."""
    img = Image.fromarray(mask).transform((size, size), Image.Transform.QUAD,
                                          list((np.asarray(quad) + 0.5).flatten()), Image.Resampling.BILINEAR,
                                          fillcolor=0)
    return np.where(np.asarray(img) >= 128, 255, 0).astype(np.uint8)


def _user_mask(path: Path, shape, max_pixels: int) -> Optional[np.ndarray]:
    mpath = path.with_name(path.stem + "_mask.png")
    if not mpath.is_file():
        return None
    rgb, _ = load_photo(mpath, max_pixels=max_pixels)
    if rgb.shape[:2] != shape[:2]:
        raise PhotoError(f"{mpath}: mask is {rgb.shape[1]}x{rgb.shape[0]}, its photo is {shape[1]}x{shape[0]}")
    return rgb.max(axis=2)


def align_photo(path, out_dir, opts: Align = Align(), log=print) -> dict:
    """Align every usable face of one photo into ``out_dir/<stem>_<k>.png``; return its manifest entry.

    A ``<stem>_mask.png`` beside the photo (white = missing) is warped along into
    ``<stem>_<k>_mask.png`` for inpainting."""
    path = Path(path)
    rgb, info = load_photo(path, max_pixels=opts.max_pixels)
    user_mask = _user_mask(path, rgb.shape, opts.max_pixels)
    entry = dict(file=path.name, **info, faces=[], skipped=[])
    dets = _select(detect_faces(rgb, opts.detector, opts.upsample, opts.min_score, DETECT_MAX_SIDE), opts)
    k = 0
    for det in dets:
        lm = landmarks68(rgb, det.box)
        try:
            face = align_face(rgb, lm, opts.resolution, transform_size(opts.resolution))
        except AlignError as exc:
            log(f"{path}: face at box {det.box} skipped: {exc}", file=sys.stderr)
            entry["skipped"].append(dict(box=det.box, score=det.score, reason=str(exc)))
            continue
        name = f"{path.stem}_{k}.png"
        save_png(Path(out_dir) / name, face.image)
        mask_name = None
        if user_mask is not None:
            mask_name = f"{path.stem}_{k}_mask.png"
            save_png(Path(out_dir) / mask_name, align_mask(user_mask, face.quad, opts.resolution))
        entry["faces"].append(dict(
            index=k, file=name, box=det.box, score=round(det.score, 6), detector=det.detector,
            subdetector=det.subdetector, landmarks=lm.astype(int).tolist(), quad=face.quad.round(6).tolist(),
            qsize=round(face.qsize, 6), shrink=face.shrink, border=face.border, crop=face.crop,
            pad_needed=face.pad_needed, pad_applied=face.pad_applied, padded=face.padded, mask=mask_name))
        k += 1
    if not entry["faces"]:
        log(f"{path}: no usable face found", file=sys.stderr)
    return entry


def align_paths(inputs, out_dir, opts: Align = Align(), manifest_name: str = "manifest.json",
                progress: bool = True, overwrite: bool = False) -> dict:
    """Align every photo under ``inputs`` into ``out_dir`` and write ``out_dir/manifest.json``.

    A photo without a usable face, or one that cannot be read (truncated, not an image, too big,
    a mask beside it that does not fit), is reported with a warning and listed in the manifest
    (``no_face``, ``unreadable``); the other photos go on. A run that yields no face at all is
    an :class:`AlignError`.
    """
    from recon.progress import StageProgress

    photos = list_photos(inputs)
    out_dir = Path(out_dir)
    if not overwrite and (out_dir / manifest_name).exists():
        raise FileExistsError(f"{out_dir / manifest_name}: an earlier alignment is there; choose another "
                              "folder or pass overwrite=True (--force)")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: Dict[str, Any] = dict(options=opts.model_dump(), images={}, no_face=[], unreadable=[])

    shown = StageProgress("align", len(photos), unit="photos", enabled=progress)

    def log(*a, **k):
        text = " ".join(map(str, a))
        shown.write(text.removeprefix("align: "), always=True)     # what was skipped, and why
    for path in photos:
        try:
            entry = align_photo(path, out_dir, opts, log=log)
        except PhotoError as exc:
            log(f"align: warning: {path.name} skipped: {exc}", file=sys.stderr)
            manifest["unreadable"].append(dict(photo=path.name, reason=str(exc)))
            shown.item_done(f"{path.name}: unreadable")
            continue
        manifest["images"][path.name] = entry
        if not entry["faces"]:
            manifest["no_face"].append(path.name)
        shown.item_done(f"{path.name}: {len(entry['faces'])} face{'s' * (len(entry['faces']) != 1)}")
    shown.close()
    if not any(e["faces"] for e in manifest["images"].values()):
        problems = [f"{p}: no face found" for p in manifest["no_face"]]
        problems += [f"{u['photo']}: {u['reason']}" for u in manifest["unreadable"]]
        raise AlignError(f"no usable face in {len(photos)} photos" + (f" ({'; '.join(problems)})" if problems else ""))
    text = json.dumps(manifest, indent=1)
    write_atomic(out_dir / manifest_name, lambda tmp: Path(tmp).write_text(text))
    return manifest
