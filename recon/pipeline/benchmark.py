"""Which method restores better, at what cost: ground truth sampled from the generator, degraded
per task and level, restored by each configured method with the same number of generator
forward+backward passes, scored against the ground truth.

Tasks and levels follow the robust method's benchmark (Poirier-Ginter & Lalonde, CVPR 2023;
levels XS..XL) for upsampling, photon noise, JPEG and brush-stroke inpainting, plus centre-hole
inpainting, blur and grayscale at levels of our own. Its faces are the generator's own, so a
perfect restoration exists (the ground truth is in the model's range): the numbers compare
methods, not the generator's reach on real photos.

Layout: ``<out>/truth/seedNNNN.png``; per cell ``<out>/<task>-<level>/<method>/seedNNNN.png``,
``target/seedNNNN.png`` and ``cell.json`` (fingerprint, per-seed metrics, seconds); ``results.json``.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from recon.config import (BenchmarkConfig, BlurOp, DownsampleOp, GrayscaleOp, JpegOp, MaskOp, PoissonOp,
                     ProjectorConfig)
from recon.restore.degrade import Degradation, brush_mask, centre_mask
from recon.data.imageio import from_uint8, save_png, to_uint8, write_atomic

LEVELS = ("XS", "S", "M", "L", "XL")
# The robust method's benchmark levels (its tasks.py), and ours for the tasks it does not have.
UPSAMPLE = dict(XS=2, S=4, M=8, L=16, XL=32)
PHOTONS = dict(XS=(96, 0.04), S=(48, 0.08), M=(24, 0.16), L=(12, 0.32), XL=(6, 0.64))
JPEG_QUALITY = dict(XS=18, S=15, M=12, L=9, XL=6)
STROKES = dict(XS=1, S=5, M=9, L=13, XL=17)
HOLE = dict(XS=0.2, S=0.3, M=0.4, L=0.5, XL=0.6)
BLUR_SIGMA = dict(XS=2.0, S=4.0, M=6.0, L=8.0, XL=10.0)
FILTERS = ("bilinear", "bicubic", "lanczos")        # the reference draws one at random; here by seed
TASKS = ("upsample", "noise", "jpeg", "inpaint_brush", "inpaint_center", "blur", "grayscale")
SCORES = ("psnr", "ssim", "lpips", "identity")


@dataclass(frozen=True)
class Cell:
    task: str
    level: str            # "-" for a task without levels (grayscale)

    @property
    def name(self) -> str:
        return f"{self.task}-{self.level}" if self.level != "-" else self.task


def cells(cfg: BenchmarkConfig) -> List[Cell]:
    out = []
    for task in cfg.tasks:
        for level in (["-"] if task == "grayscale" else cfg.levels):
            out.append(Cell(task, level))
    return out


def task_degradation(cell: Cell, R: int, seed: int, draw_seed: Optional[int] = None) -> Degradation:
    """The degradation of one task and level for one ground-truth face: ``seed`` picks the brush
    strokes and the downsampling filter, and (unless ``draw_seed`` is given) the target's noise
    and the holes' fill. Restoration uses one ``draw_seed`` for every face, so that a batch of
    faces shares one fill, as a face alone would have it."""
    t, lv = cell.task, cell.level
    masks = None
    if t == "upsample":
        ops = [DownsampleOp(factor=min(UPSAMPLE[lv], R), filter=FILTERS[seed % len(FILTERS)])]
    elif t == "noise":
        ops = [PoissonOp(photons=PHOTONS[lv][0], dropout=PHOTONS[lv][1])]
    elif t == "jpeg":
        ops = [JpegOp(quality=JPEG_QUALITY[lv])]
    elif t == "inpaint_brush":
        ops = [MaskOp(source="brush", strokes=STROKES[lv])]
        masks = (brush_mask(R, STROKES[lv], seed) > 0.5).float()
    elif t == "inpaint_center":
        ops = [MaskOp(source="center", fraction=HOLE[lv])]
        masks = centre_mask(R, HOLE[lv])
    elif t == "blur":
        sigma = BLUR_SIGMA[lv]
        kernel = min(2 * round(1.75 * sigma) + 1, R - 1 if R % 2 == 0 else R - 2)   # odd, smaller than the image
        ops = [BlurOp(kernel=max(kernel, 3), sigma=sigma)]
    elif t == "grayscale":
        ops = [GrayscaleOp()]
    else:
        raise ValueError(f"unknown benchmark task {t!r}")
    return Degradation(ops, R, masks=masks, seed=seed if draw_seed is None else draw_seed)


def method_budget(cfg: ProjectorConfig, budget: int) -> ProjectorConfig:
    """The method's settings with ``budget`` generator forward+backward passes per target: the
    official projector's ``num_steps``; the robust method's phases scaled in proportion (the
    rounding remainder goes to the last phase)."""
    if cfg.method == "official":
        return cfg.model_copy(update=dict(num_steps=budget, snapshot_every=0))
    steps = cfg.robust.steps
    total = sum(steps) or 1
    scaled = [int(budget * s / total) for s in steps]
    scaled[-1] += budget - sum(scaled)
    return cfg.model_copy(update=dict(robust=cfg.robust.model_copy(update=dict(steps=scaled)), snapshot_every=0))


def sample_truth(G, seeds: List[int], psi: float) -> Dict[int, np.ndarray]:
    """Ground-truth faces ``uint8 [R, R, 3]`` from ``RandomState(seed)`` z, truncation ``psi``, the
    generator's constant noise."""
    device = next(G.parameters()).device
    out = {}
    with torch.no_grad():
        for s in seeds:
            z = torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)).to(device)
            img = G.synthesis(G.mapping(z, None, truncation_psi=psi), noise_mode="const")
            out[s] = to_uint8(img.cpu())[0]
    return out


class Restorer:
    """Runs one method on a batch of degraded targets; returns images ``[B, 3, R, R]`` in [-1, 1]."""

    def __init__(self, G, features, cfg: ProjectorConfig):
        from recon.restore.official import Projector
        from recon.restore.robust import RobustProjector, VGGLPIPS

        self.cfg = cfg
        self.engine = (RobustProjector(G, VGGLPIPS(features.vgg), cfg.robust) if cfg.method == "robust"
                       else Projector(G, features, cfg))

    def __call__(self, targets: torch.Tensor, d: Degradation, names: List[str]) -> torch.Tensor:
        from recon.restore.official import TorchRandom
        from recon.restore.robust import restore_degraded

        rngs = [TorchRandom(self.cfg.seed) for _ in names]
        if self.cfg.method == "official":
            res = self.engine.project(targets, degradation=d, names=names, rngs=rngs, progress=False)
            return torch.stack([r.image for r in res])
        res = restore_degraded(self.engine, targets, d, rngs=rngs, names=names)
        return torch.stack([r.images["W++"] * 2 - 1 for r in res])


def score(result: np.ndarray, truth: np.ndarray, lpips, identity: bool) -> Dict[str, float]:
    from recon.metrics import identity_distance, psnr, ssim

    m = dict(psnr=psnr(result, truth), ssim=ssim(result, truth))
    if lpips is not None:
        m["lpips"] = lpips(result, truth)
    if identity:
        m["identity"] = identity_distance(result, truth)
    return m


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def run_benchmark(cfg: BenchmarkConfig, methods: Dict[str, ProjectorConfig], G, features, lpips, out_dir,
                  weights_digest: str = "", batch_size: int = 1) -> dict:
    """Run every (task, level) x method cell that is not done yet (a cell's ``cell.json`` carries
    a fingerprint of what made it); write ``results.json`` and return it."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    R = G.img_resolution
    seeds = list(cfg.seeds)
    truth = sample_truth(G, seeds, cfg.truncation_psi)
    for s, img in truth.items():
        save_png(out_dir / "truth" / f"seed{s:04d}.png", img)
    budgeted = {name: method_budget(m, cfg.budget) for name, m in methods.items()}
    todo = [(c, name) for c in cells(cfg) for name in budgeted]
    results: Dict[str, Dict[str, dict]] = {}
    bar = tqdm(total=len(todo) * len(seeds), desc="benchmark", unit="restoration")
    restorers: Dict[str, Restorer] = {}
    cell_targets: Dict[str, Dict[int, np.ndarray]] = {}
    for cell, name in todo:
        cdir = out_dir / cell.name
        if cell.name not in cell_targets:          # once per cell, shared by its methods
            targets = cell_targets[cell.name] = {}
            for s in seeds:
                targets[s] = to_uint8(task_degradation(cell, R, s).target(from_uint8(truth[s])))[0]
                save_png(cdir / "target" / f"seed{s:04d}.png", targets[s])
            results[cell.name] = {"input": dict(per_seed={s: score(targets[s], truth[s], lpips, cfg.identity)
                                                          for s in seeds})}
        targets = cell_targets[cell.name]
        fp = _fingerprint(budgeted[name].fingerprint(), cfg.budget, cell.name, seeds, cfg.truncation_psi,
                          weights_digest, [hashlib.sha256(targets[s].tobytes()).hexdigest() for s in seeds])
        cell_json = cdir / name / "cell.json"
        if cell_json.is_file() and json.loads(cell_json.read_text()).get("fingerprint") == fp:
            results[cell.name][name] = json.loads(cell_json.read_text())
            bar.update(len(seeds))
            continue
        restore = restorers.get(name) or restorers.setdefault(name, Restorer(G, features, budgeted[name]))
        per_seed, seconds = {}, 0.0
        for i in range(0, len(seeds), batch_size):
            chunk = seeds[i:i + batch_size]
            ds = [task_degradation(cell, R, s, draw_seed=0) for s in chunk]
            d = ds[0]
            if d.has_mask:
                d = Degradation(d.ops, R, masks=torch.cat([x.masks for x in ds]), seed=0)
            bar.set_postfix_str(f"{cell.name} {name}")
            t0 = time.perf_counter()
            images = restore(torch.cat([from_uint8(targets[s]) for s in chunk]), d, [f"seed{s:04d}" for s in chunk])
            seconds += time.perf_counter() - t0
            for s, img in zip(chunk, to_uint8(images.detach().cpu())):
                save_png(cdir / name / f"seed{s:04d}.png", img)
                per_seed[s] = score(img, truth[s], lpips, cfg.identity)
                bar.update(1)
        record = dict(fingerprint=fp, method=name, passes=cfg.budget, seconds_per_restoration=seconds / len(seeds),
                      per_seed=per_seed)
        write_atomic(cell_json, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
        results[cell.name][name] = json.loads(json.dumps(record))
    bar.close()
    summary = summarize(results, list(budgeted))
    doc = dict(seeds=seeds, truncation_psi=cfg.truncation_psi, budget=cfg.budget, resolution=R,
               methods={n: m.model_dump() for n, m in budgeted.items()}, cells=results, **summary)
    write_atomic(out_dir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(_finite(doc), indent=1)))
    return doc


def _mean(values) -> Optional[float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summarize(results: Dict[str, Dict[str, dict]], methods: List[str]) -> dict:
    """Per cell and method the mean of each score over seeds; per method the mean over cells
    (the headline) and how many cells it wins on LPIPS."""
    table = {}
    for cell, by_method in results.items():
        table[cell] = {}
        for name, rec in by_method.items():
            per_seed = list(rec["per_seed"].values())
            table[cell][name] = {k: _mean(p.get(k) for p in per_seed) for k in SCORES}
            if "seconds_per_restoration" in rec:
                table[cell][name]["seconds"] = rec["seconds_per_restoration"]
    headline = {}
    for name in methods + ["input"]:
        rows = [t[name] for t in table.values() if name in t]
        headline[name] = {k: _mean(r.get(k) for r in rows) for k in SCORES + ("seconds",)}
        headline[name] = {k: v for k, v in headline[name].items() if v is not None}
    wins = {name: 0 for name in methods}
    for t in table.values():
        scored = [(t[n]["lpips"], n) for n in methods if t.get(n, {}).get("lpips") is not None]
        if scored:
            wins[min(scored)[1]] += 1
    for name in methods:
        headline[name]["lpips_wins"] = wins[name]
    return dict(table=table, headline=headline)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
