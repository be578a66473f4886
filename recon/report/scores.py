"""The numbers of the report, computed from the stages' outputs and nothing else: per mode each
face's metrics, loss curve and phases; the synthetic study's cells; the benchmark's table. The
HTML (:mod:`.render`) only shows what is computed here."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from recon.data.imageio import load_photo
from recon.metrics import GLOSSARY, at_size, identity_distance, psnr, ssim
from recon.pipeline.records import Target, Targets
from recon.restore.composite import composite_for
from recon.restore.degrade import parse_ops


def mean(values) -> Optional[float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def read_distance(csv_path: Path) -> List[float]:
    """The ``dist`` column of a ``loss.csv`` (the perceptual distance without regularizers)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    key = "dist" if rows and "dist" in rows[0] else "loss"
    return [float(r[key]) for r in rows]


def read_phases(csv_path: Path) -> Dict[str, int]:
    """``{phase: first step}`` of a ``loss.csv``, when the run had more than one phase."""
    phases: Dict[str, int] = {}
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("phase"):
                phases.setdefault(r["phase"], int(r["step"]))
    return phases if len(phases) > 1 else {}


@dataclass
class FaceScores:
    """One restored face: its target record, result folder, metrics, loss curve and phases."""
    target: Target
    folder: Path
    metrics: Dict[str, float]
    curve: List[float]
    phases: Dict[str, int]


@dataclass
class ModeScores:
    mode: str
    observed: bool
    ops: list                                   # the mode's typed ops
    degraded_dir: Path
    faces: List[FaceScores]
    skipped: List[dict]                         # faces the degrade stage could not use
    composite: Optional[Tuple[str, Callable]]   # (what, combine) where the input tells something
    photos: Optional[List[str]] = None          # the photos the mode is for (patterns), None: all

    @property
    def means(self) -> Dict[str, float]:
        out = {k: mean(f.metrics.get(k) for f in self.faces) for k in GLOSSARY}
        return {k: v for k, v in out.items() if v is not None}

    def images(self, face: FaceScores) -> Dict[str, np.ndarray]:
        """The face's images by role: ``original`` (absent when observed), ``degraded``, each
        earlier phase's ``after <phase>``, ``generated``, ``generated degraded`` and, where the
        mode has one, ``composited``."""
        out = {} if self.observed else {"original": load_photo(face.target.source)[0]}
        out["degraded"] = load_photo(self.degraded_dir / face.target.degraded)[0]
        for p in sorted(face.folder.glob("image_*.png")):
            out[f"after {p.stem[len('image_'):]}"] = load_photo(p)[0]
        out["generated"] = load_photo(face.folder / "image.png")[0]
        if (face.folder / "uncertainty.png").is_file():          # posterior samples
            out["samples mean"] = load_photo(face.folder / "mean.png")[0]
            out["uncertainty"] = load_photo(face.folder / "uncertainty.png")[0]
        out["generated degraded"] = load_photo(face.folder / "degraded.png")[0]
        if self.composite is not None:
            out["composited"] = self.composite[1](out["generated"], out["degraded"], self.hole(face))
        return out

    def hole(self, face: FaceScores) -> Optional[np.ndarray]:
        """Boolean ``[H, W]``, True = missing, or None without a mask."""
        if not face.target.mask:
            return None
        return np.asarray(Image.open(self.degraded_dir / face.target.mask).convert("L")) >= 128


def score_mode(mode: str, degraded_dir: Path, projected_dir: Path, identity: bool = True, lpips=None) -> ModeScores:
    """Every finished face of a mode scored against its original (not for observed photos: there
    is no ground truth) and its degraded target."""
    targets = Targets.load(degraded_dir)
    scores = ModeScores(mode, targets.observed, parse_ops(targets.ops), Path(degraded_dir), [], targets.skipped, None,
                        targets.photos)
    scores.composite = composite_for(scores.ops)
    for target in targets.faces:
        folder = Path(projected_dir) / target.name
        if not (folder / "done.json").is_file():
            continue
        face = FaceScores(target, folder, {}, read_distance(folder / "loss.csv"), read_phases(folder / "loss.csv"))
        images = scores.images(face)
        hole = scores.hole(face)
        m = face.metrics
        generated, degraded = images["generated"], images["degraded"]
        if not scores.observed:
            original = images["original"]
            m.update(psnr=psnr(generated, original), ssim=ssim(generated, original))
            m["psnr_degraded_input"] = psnr(at_size(degraded, original.shape[0]), original)
        known = None
        if hole is not None:            # at the observation's size (smaller after a downsample)
            small = Image.fromarray(hole).resize(degraded.shape[1::-1], Image.Resampling.NEAREST)
            known = ~np.asarray(small)
        m["consistency_psnr"] = psnr(images["generated degraded"], degraded, known)
        if hole is not None and not scores.observed:
            m["psnr_mask"] = psnr(generated, images["original"], hole)
        samples = sorted((folder / "samples").glob("sample*.png"))
        if samples:
            m["uncertainty"] = json.loads((folder / "samples.json").read_text())["mean_std"]
            if not scores.observed:
                each = [psnr(load_photo(p)[0], images["original"]) for p in samples]
                m.update(psnr_samples_min=min(each), psnr_samples_max=max(each))
        if "composited" in images and not scores.observed:
            m["psnr_composited"] = psnr(images["composited"], images["original"])
        if lpips is not None:
            if not scores.observed:
                m["lpips"] = lpips(generated, images["original"])
                m["lpips_degraded_input"] = lpips(at_size(degraded, images["original"].shape[0]), images["original"])
            m["lpips_consistency"] = lpips(images["generated degraded"], degraded)
        if identity:
            m["identity"] = identity_distance(images.get("original", degraded), generated)
        m.update(found(folder, target))
        scores.faces.append(face)
    return scores


def found(folder: Path, target: Target) -> Dict[str, float]:
    """What was found out about a face of an observed mode: the blur estimated with it (its
    receipt), its size in the photo and the observation's (the degrade stage's record)."""
    out: Dict[str, float] = {}
    receipt = json.loads((folder / "done.json").read_text())
    for key, value in (receipt.get("estimates") or {}).items():
        out["sigma" if key == "sigma" else key] = float(value)
    detected = target.detected or {}
    if detected.get("quad_side") is not None:
        out["face_px"] = float(detected["quad_side"])
        out["observation_px"] = float(detected["observation"])
    if "grayscale" in detected:
        out["grayscale_found"] = float(detected["grayscale"])
    return out


@dataclass
class StudyCell:
    tag: str
    num_steps: int
    latent_dist_reg_weight: float
    psnr: Optional[float]
    per_seed: Dict[str, float]
    curves: Dict[str, List[float]] = field(default_factory=dict)


def score_synthetic(synthetic_dir: Path) -> Tuple[dict, Dict[Tuple[int, float], StudyCell], Tuple[int, float]]:
    """``(runs.json, cells by (num_steps, reg), best cell)``: each cell's PSNR per seed against the
    sampled truth and their mean; the best cell has the highest mean."""
    runs = json.loads((synthetic_dir / "runs.json").read_text())
    seeds = [f"seed{s:04d}" for s in runs["seeds"]]
    truth = {s: load_photo(synthetic_dir / "truth" / f"{s}.png")[0] for s in seeds}
    cells = {}
    for tag, run in runs["runs"].items():
        per_seed = {s: psnr(load_photo(synthetic_dir / tag / s / "image.png")[0], truth[s]) for s in seeds}
        curves = {s: read_distance(synthetic_dir / tag / s / "loss.csv") for s in seeds}
        cells[(run["num_steps"], run["latent_dist_reg_weight"])] = StudyCell(
            tag, run["num_steps"], run["latent_dist_reg_weight"], mean(per_seed.values()), per_seed, curves)
    def quality(k: Tuple[int, float]) -> float:
        p = cells[k].psnr
        return p if p is not None else -math.inf
    best = max(cells, key=quality)
    return runs, cells, best


def best_lpips(by_method: Dict[str, dict], methods: List[str]) -> Optional[str]:
    """The method with the lowest LPIPS in a benchmark row (None when no method has one)."""
    scored = [(by_method[n]["lpips"], n) for n in methods if by_method.get(n, {}).get("lpips") is not None]
    return min(scored)[1] if scored else None
