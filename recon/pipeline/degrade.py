"""The degrade@<mode> stage: each aligned face's degraded target, as the 8-bit file a user has.

Layout: ``<out>/<face>.png`` (the target), ``<face>_mask.png`` (white = missing) and
``targets.json`` (:class:`recon.pipeline.records.Targets`).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from recon.config import AutoOp, BlurOp, DownsampleOp, GrayscaleOp, MaskOp, Op, auto_kernel, needs_observed, op_record
from recon.data.imageio import PhotoError, from_uint8, load_photo, save_png, to_uint8
from recon.errors import DegradationError, MissingInputError
from recon.restore.degrade import Degradation, brush_mask, centre_mask, mask_from_color, mask_from_file, parse_ops

from .records import Face, Target, Targets

# A face's crop within this fraction below a power of two counts as that size (landmarks jitter by
# a pixel or two, and a 127.4 px face was not taken at 64 px).
SIZE_TOLERANCE = 0.1
MIN_OBSERVATION = 4


def quad_side(quad) -> Optional[float]:
    """How many photo pixels the side of a face's crop covers (the alignment's quad), or None."""
    if quad is None:
        return None
    q = np.asarray(quad, dtype=np.float64)
    return float(np.hypot(*(q[3] - q[0])))


def observation_size(side: Optional[float], resolution: int) -> int:
    """The side of a face's observation at its photo's own sampling: the largest power of two at or
    below the pixels its crop covers (:data:`SIZE_TOLERANCE` below a power counts as it), at most
    the generator's ``resolution``; the generator's own without a record of the crop."""
    if side is None:
        return resolution
    size = 2 ** int(np.floor(np.log2(max(side * (1 + SIZE_TOLERANCE), MIN_OBSERVATION))))
    return int(min(size, resolution))


def channel_spread(rgb: np.ndarray) -> float:
    """How far a photo's channels disagree: the 99th percentile over its pixels of max - min
    channel, in 8-bit levels (0 for a gray photo; 20 and more for every colour photo measured)."""
    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    return float(np.percentile(spread, 99))


def resolve_ops(ops: Sequence[Op], rgb: np.ndarray, quad, resolution: int) -> Tuple[List[Op], dict]:
    """A face's own ops for an observed mode, and what was found out about it: ``type: auto`` becomes
    a blur to estimate (``sigma: auto``), grayscale when the photo's channels agree, and the
    downsample to the face's own size; ``factor: auto`` becomes the face's factor (dropped at 1).
    ``detected``: the crop's side in photo pixels, the observation's size and factor, and for
    ``auto`` the channel spread and whether it counts as gray."""
    side = quad_side(quad)
    size = observation_size(side, resolution)
    factor = resolution // size
    out: List[Op] = []
    detected: dict = dict(quad_side=round(side, 1) if side is not None else None, observation=size, factor=factor)
    for op in ops:
        if isinstance(op, AutoOp):
            if op.blur:
                lo, hi = op.sigma_range
                out.append(BlurOp(sigma="auto", sigma_range=[lo, hi], kernel=auto_kernel(hi)))
            spread = channel_spread(rgb)
            detected.update(channel_spread=spread, grayscale=spread <= op.grayscale_tolerance)
            if detected["grayscale"]:
                out.append(GrayscaleOp())
            if factor > 1:
                out.append(DownsampleOp(factor=factor))
        elif isinstance(op, DownsampleOp) and op.factor == "auto":
            if factor > 1:
                out.append(DownsampleOp(factor=factor, filter=op.filter))
        else:
            out.append(op)
    return out, detected



def _mask_for(face: Face, op: MaskOp, rgb: np.ndarray, seed: int) -> torch.Tensor:
    size = rgb.shape[0]
    if op.source == "file":
        if not face.mask:
            raise MissingInputError(f"{face.photo}: the mask source is file, but the photo has no "
                                    "<stem>_mask.png beside it (white = missing)")
        return mask_from_file(face.mask, size)
    if op.source == "color":
        return mask_from_color(rgb, op.color, op.tolerance)
    if op.source == "brush":   # seeded per face, so every face has its own strokes, the same each run
        seed = (seed + int(hashlib.sha256(face.name.encode()).hexdigest()[:8], 16)) % 2**32
        return (brush_mask(size, op.strokes, seed) > 0.5).float()
    return centre_mask(size, op.fraction)


def degrade_stage(mode: str, ops: Sequence[Op], faces: List[Face], out_dir, seed: int = 0,
                  observed: bool = False, photos: Optional[List[str]] = None) -> Targets:
    """Write each face's degraded target as an 8-bit PNG (plus its mask) and targets.json.

    ``ops``: the mode's typed ops (``Params.ops(mode)``). ``observed``: the photos are already
    degraded: each is its own target, as it is (the ops then only model, for the generated image,
    how the photo was degraded; masks are still made). A face that cannot be a target of this
    mode (unreadable, no mask file, no pixel of the mask colour) is skipped with a warning and
    listed under ``skipped``; a mode left with no target at all says so and has nothing to do
    (it never stops the other modes). ``photos``: the patterns the faces were chosen by (recorded)."""
    from recon.progress import StageProgress

    mask_op = next((op for op in ops if isinstance(op, MaskOp)), None)
    per_face = needs_observed(list(ops)) is not None
    if per_face and not observed:
        raise DegradationError(f"degrade.{mode}: {needs_observed(list(ops))} is for photos that are already degraded "
                               "(observed: true)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: List[Target] = []
    skipped: List[dict] = []
    shown = StageProgress(f"degrade {mode}", len(faces))
    for k, face in enumerate(faces):
        shown.base = float(k)
        shown.update()
        try:
            rgb, _ = load_photo(face.file)
            if rgb.shape[0] != rgb.shape[1]:
                raise PhotoError(f"{face.file}: aligned faces must be square, got {rgb.shape[1]}x{rgb.shape[0]}")
            mask = _mask_for(face, mask_op, rgb, seed) if mask_op is not None else None
            own, detected = resolve_ops(ops, rgb, face.quad, rgb.shape[0]) if per_face else (list(ops), None)
            d = Degradation(own, rgb.shape[0], masks=mask, seed=seed)
        except (PhotoError, DegradationError, MissingInputError) as exc:
            print(f"degrade {mode}: warning: {face.name} skipped: {exc}", file=sys.stderr, flush=True)
            skipped.append(dict(name=face.name, photo=face.photo, reason=str(exc)))
            continue
        if observed:        # the photo as it is; an observation smaller than the face is its area average
            degraded = rgb if d.observed_size == rgb.shape[0] else to_uint8(torch.nn.functional.interpolate(
                from_uint8(rgb), size=(d.observed_size,) * 2, mode="area"))[0]
        else:
            degraded = to_uint8(d.target(from_uint8(rgb)))[0]
        save_png(out_dir / f"{face.name}.png", degraded)
        mask_name = None
        if mask is not None:
            mask_name = f"{face.name}_mask.png"
            save_png(out_dir / mask_name, np.where(mask[0, 0].numpy() > 0.5, 0, 255).astype(np.uint8))
        records.append(Target(name=face.name, source=face.file, photo=face.photo, degraded=f"{face.name}.png",
                              quad=face.quad, mask=mask_name, mask_source=mask_op.source if mask_op else None,
                              ops=[op_record(op) for op in own] if per_face else None, detected=detected))
    shown.base = float(len(faces))
    shown.close()
    if not records:
        why = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped) or (
            f"no face of a photo matching {', '.join(photos)}" if photos else "no aligned faces")
        print(f"degrade {mode}: warning: no face can be a target of this mode ({why}); it has nothing to do",
              file=sys.stderr, flush=True)
    targets = Targets(mode=mode, ops=[op_record(op) for op in ops], seed=seed, observed=observed,
                      faces=records, skipped=skipped, photos=photos)
    targets.save(out_dir)
    return targets


def degradation_for(targets: Targets, faces: Sequence[Target], degraded_dir, size: int) -> Degradation:
    """The mode's degradation for a batch of its targets (their masks stacked), which share their
    ops (a face's own, for a mode that resolves them per face)."""
    masks: Optional[torch.Tensor] = None
    if any(f.mask for f in faces):
        masks = torch.cat([mask_from_file(Path(degraded_dir) / f.mask, size) for f in faces if f.mask])
    ops = {json.dumps(targets.ops_of(f), sort_keys=True) for f in faces}
    if len(ops) > 1:
        raise ValueError("a batch's faces must share their ops")
    return Degradation(parse_ops(targets.ops_of(faces[0])), size, masks=masks, seed=targets.seed)
