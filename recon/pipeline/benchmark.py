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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Union

import numpy as np
import torch

from recon.config import (
    SIGMA_RANGE,
    BenchmarkConfig,
    BlurOp,
    DownsampleOp,
    GrayscaleOp,
    JpegOp,
    MaskOp,
    Op,
    PoissonOp,
    ProjectorConfig,
    Runtime,
    auto_kernel,
)
from recon.data.imageio import from_uint8, save_png, to_uint8, write_json
from recon.data.ownfiles import own_dir, read_record, remove
from recon.metrics import at_size, identity_distance, psnr, ssim
from recon.progress import StageProgress
from recon.restore import make_method, method_class
from recon.restore.degrade import Degradation, brush_mask, centre_mask
from recon.restore.method import Method
from recon.restore.randomness import TorchRandom

from .distributed import is_main
from .publish import mirror
from .records import ReceiptRecord, check_receipt, say_reruns, write_receipt
from .runtime import resolve_batch
from .synthetic import sample_faces
from .units import Unit, WorkQueue, check_batch, drive

LEVELS = ("XS", "S", "M", "L", "XL")
# The robust method's benchmark levels (its tasks.py), and ours for the tasks it does not have.
UPSAMPLE = dict(XS=2, S=4, M=8, L=16, XL=32)
PHOTONS = dict(XS=(96, 0.04), S=(48, 0.08), M=(24, 0.16), L=(12, 0.32), XL=(6, 0.64))
JPEG_QUALITY = dict(XS=18, S=15, M=12, L=9, XL=6)
STROKES = dict(XS=1, S=5, M=9, L=13, XL=17)
HOLE = dict(XS=0.2, S=0.3, M=0.4, L=0.5, XL=0.6)
BLUR_SIGMA = dict(XS=2.0, S=4.0, M=6.0, L=8.0, XL=10.0)
# the reference draws one at random; here by seed
FILTERS: Tuple[Literal["bilinear", "bicubic", "lanczos"], ...] = ("bilinear", "bicubic", "lanczos")
TASKS = ("upsample", "noise", "jpeg", "inpaint_brush", "inpaint_center", "blur", "grayscale", "blur_blind",
         "upsample_blind")
# Blind tasks: the target made as the known task makes it, restored without knowing the parameter
# (a blur's sigma estimated with the face; the factor found from the observation's size).
BLIND = {"blur_blind": "blur", "upsample_blind": "upsample"}
SCORES = ("psnr", "ssim", "lpips", "identity")
FOUND = ("sigma", "sigma_true", "sigma_error", "factor", "factor_true")     # what a blind task estimated


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


def blur_kernel(sigma: float, R: int) -> int:
    """The known blur task's kernel: odd, 3.5 sigma, smaller than the image."""
    return max(min(2 * round(1.75 * sigma) + 1, R - 1 if R % 2 == 0 else R - 2), 3)


def restore_degradation(cell: Cell, R: int, seed: int, observed_size: int, draw_seed: Optional[int] = None
                        ) -> Degradation:
    """The degradation a method restores a cell's target through: the task's own, or for a blind
    task the one it can know: ``blur_blind`` a blur whose sigma is estimated with the face (within
    :data:`recon.config.SIGMA_RANGE`, the kernel held below the image's size), ``upsample_blind``
    the downsample whose factor the observation's size (``observed_size``) gives."""
    if cell.task == "blur_blind":
        lo, hi = SIGMA_RANGE
        kernel = min(auto_kernel(hi), R - 1 if R % 2 == 0 else R - 2)
        return Degradation([BlurOp(sigma="auto", sigma_range=[lo, hi], kernel=kernel)], R,
                           seed=seed if draw_seed is None else draw_seed)
    if cell.task == "upsample_blind":
        return Degradation([DownsampleOp(factor=R // observed_size)], R, seed=seed if draw_seed is None else draw_seed)
    return task_degradation(cell, R, seed, draw_seed)


def task_degradation(cell: Cell, R: int, seed: int, draw_seed: Optional[int] = None) -> Degradation:
    """The degradation of one task and level for one ground-truth face: ``seed`` picks the brush
    strokes and the downsampling filter, and (unless ``draw_seed`` is given) the target's noise
    and the holes' fill. Restoration uses one ``draw_seed`` for every face, so that a batch of
    faces shares one fill, as a face alone would have it. A blind task's target is its known
    task's."""
    t, lv = BLIND.get(cell.task, cell.task), cell.level
    masks = None
    ops: List[Op]
    if t == "upsample":
        ops = [DownsampleOp(factor=min(UPSAMPLE[lv], R), filter=FILTERS[seed % len(FILTERS)])]
    elif t == "noise":
        ops = [PoissonOp(photons=PHOTONS[lv][0], dropout=PHOTONS[lv][1])]
    elif t == "jpeg":
        ops = [JpegOp(quality=JPEG_QUALITY[lv])]
    elif t == "inpaint_brush":
        ops = [MaskOp(source="brush", strokes=STROKES[lv])]
        masks = brush_mask(R, STROKES[lv], seed)          # soft, as the reference's
    elif t == "inpaint_center":
        ops = [MaskOp(source="center", fraction=HOLE[lv])]
        masks = centre_mask(R, HOLE[lv])
    elif t == "blur":
        ops = [BlurOp(kernel=blur_kernel(BLUR_SIGMA[lv], R), sigma=BLUR_SIGMA[lv])]
    elif t == "grayscale":
        ops = [GrayscaleOp()]
    else:
        raise ValueError(f"unknown benchmark task {t!r}")
    return Degradation(ops, R, masks=masks, seed=seed if draw_seed is None else draw_seed)


def blind_record(cell: Cell, R: int, res, degradation: Degradation) -> Dict[str, float]:
    """What a blind restoration found against the truth: the sigma estimated and its error, or the
    factor found and the one used."""
    if cell.task == "blur_blind":
        true = BLUR_SIGMA[cell.level]
        return dict(sigma=res.estimates["sigma"], sigma_true=true, sigma_error=abs(res.estimates["sigma"] - true))
    if cell.task == "upsample_blind":
        found = next(op.factor for op in degradation.ops if isinstance(op, DownsampleOp))
        return dict(factor=float(found), factor_true=float(min(UPSAMPLE[cell.level], R)))
    return {}


def blind_vs_known(table: Dict[str, Dict[str, dict]], methods: List[str]) -> List[dict]:
    """Per blind task, level and method: its scores beside the known task's at the same level (the
    same targets, the same budget), and what it estimated."""
    rows = []
    for cell, by in table.items():
        task, _, level = cell.rpartition("-")
        if task not in BLIND or f"{BLIND[task]}-{level}" not in table:
            continue
        known = table[f"{BLIND[task]}-{level}"]
        for name in methods:
            if name in by and name in known:
                rows.append(dict(task=task, level=level, method=name, known=known[name], blind=by[name]))
    return rows


def budgeted(cfg: ProjectorConfig, budget: int) -> ProjectorConfig:
    """A method's settings with ``budget`` generator forward+backward passes per target, no snapshots."""
    return method_class(cfg).within_budget(cfg, budget).model_copy(update=dict(snapshot_every=0))


def score(result: np.ndarray, truth: np.ndarray, lpips, identity: bool) -> Dict[str, float]:
    m = dict(psnr=psnr(result, truth), ssim=ssim(result, truth))
    if lpips is not None:
        m["lpips"] = lpips(result, truth)
    if identity:
        m["identity"] = identity_distance(result, truth)
    return m


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


CELL_RECEIPT = "cell.json"
MEAN_ROW = " mean"          # a samples method's second row: the per-pixel mean of its samples


def run_benchmark(cfg: BenchmarkConfig, methods: Dict[str, ProjectorConfig], G, vgg, lpips, out_dir,
                  weights_digest: str = "", batch_size: Union[int, str] = 1, lease_s: float = 300.0,
                  wait: bool = True, state_dir=None) -> dict:
    """Run every (task, level) x method cell that is not done yet, as one of any number of
    workers (each cell and method is a unit of work of cost budget x seeds,
    :mod:`recon.pipeline.units`); once every cell is done, write ``results.json`` and return it
    (an empty dict when this worker returns before that, without ``wait``). A cell's
    ``cell.json`` is its receipt (:mod:`recon.pipeline.records`): a fingerprint of what made the
    cell and the digest of each restored image; a cell is skipped only when the receipt vouches
    for it, and done again (with a line saying why) otherwise. ``state_dir``: where the work is
    done (default ``out_dir``), mirrored into ``out_dir`` once every cell is."""
    final_dir = Path(out_dir)
    out_dir = Path(state_dir) if state_dir is not None else final_dir      # where the cells are made
    out_dir.mkdir(parents=True, exist_ok=True)
    R = G.img_resolution
    seeds = list(cfg.seeds)
    truth = dict(zip(seeds, sample_faces(G, seeds, cfg.truncation_psi)))
    for s, img in truth.items():
        save_png(own_dir(out_dir / "truth") / f"seed{s:04d}.png", img)
    targets = {c.name: {s: to_uint8(task_degradation(c, R, s).target(from_uint8(truth[s])))[0] for s in seeds}
               for c in cells(cfg)}
    by_name = {c.name: c for c in cells(cfg)}
    methods_budgeted = {name: budgeted(m, cfg.budget) for name, m in methods.items()}
    fingerprints = {}
    for cell in by_name:
        for name, mcfg in methods_budgeted.items():
            fingerprints[cell, name] = _fingerprint(method_class(mcfg).fingerprint(mcfg), cfg.budget, cell, seeds,
                                                    cfg.truncation_psi, weights_digest,
                                                    [hashlib.sha256(targets[cell][s].tobytes()).hexdigest()
                                                     for s in seeds])
    required = {name: [f"seed{s:04d}{suffix}.png" for s in seeds
                       for suffix in ("", "_mean")[:1 + (m.samples.count > 1)]] for name, m in methods_budgeted.items()}
    finished = _finished_cells(out_dir, fingerprints, required)
    units = [Unit(f"{cell}.{name}", float(cfg.budget * len(seeds)), dict(cell=cell, method=name))
             for cell in by_name for name in methods_budgeted]
    queue = WorkQueue(out_dir, lease_s, say=lambda s: print(f"benchmark: {s}", file=sys.stderr, flush=True))
    key = hashlib.sha256(json.dumps(sorted(fingerprints.values())).encode()).hexdigest()
    batch = queue.recorded(key, "batch_size")
    if batch is None:
        batch = resolve_batch(Runtime(batch_size=batch_size), str(next(G.parameters()).device), G, vgg)
    batch = queue.open(key, lambda meta: units if "batch_size" in meta else [], dict(batch_size=batch),
                       done=finished)["batch_size"]
    queue.reopen([u.id for u in units if u.id not in finished])
    if not queue.all_done():
        check_batch(batch, batch_size)
    progress = StageProgress("benchmark", len(units), len(queue.done_ids()), unit="cells", enabled=is_main(),
                             count_done=lambda: len(queue.done_ids()))
    made: Dict[str, Method] = {}

    def do(unit: Unit) -> None:
        cell, name = by_name[unit.data["cell"]], unit.data["method"]
        mcfg = methods_budgeted[name]
        cdir = own_dir(out_dir / cell.name)
        remove(cdir / name)
        for s in seeds:
            save_png(own_dir(cdir / "target") / f"seed{s:04d}.png", targets[cell.name][s])
        method = made.get(name) or made.setdefault(name, make_method(G, vgg, mcfg))
        per_seed: Dict[int, dict] = {}
        per_seed_mean: Dict[int, dict] = {}
        seconds = 0.0
        for i in range(0, len(seeds), batch):
            chunk = seeds[i:i + batch]
            ds = [restore_degradation(cell, R, s, targets[cell.name][s].shape[0], draw_seed=0) for s in chunk]
            d = ds[0]
            if d.masks is not None:
                d = Degradation(d.ops, R, masks=torch.cat([x.masks for x in ds if x.masks is not None]), seed=0)
            t0 = time.perf_counter()
            restored = method.restore(torch.cat([from_uint8(targets[cell.name][s]) for s in chunk]), d,
                                      names=[f"seed{s:04d}" for s in chunk],
                                      rngs=[TorchRandom(mcfg.seed) for _ in chunk])
            seconds += time.perf_counter() - t0
            for s, res, d_used in zip(chunk, restored, ds):
                img = to_uint8(res.image[None])[0]
                save_png(cdir / name / f"seed{s:04d}.png", img)
                per_seed[s] = dict(score(img, truth[s], lpips, cfg.identity), **blind_record(cell, R, res, d_used))
                if res.samples is not None:          # the samples' mean is scored as a row of its own
                    mean = to_uint8(res.samples.mean[None])[0]
                    save_png(cdir / name / f"seed{s:04d}_mean.png", mean)
                    per_seed_mean[s] = score(mean, truth[s], lpips, cfg.identity)
        record = dict(fingerprint=fingerprints[cell.name, name], method=name,
                      passes=method_class(mcfg).passes(mcfg), seconds_per_restoration=seconds / len(seeds),
                      per_seed=per_seed, **(dict(per_seed_mean=per_seed_mean) if per_seed_mean else {}))
        write_receipt(cdir / name, CELL_RECEIPT, _finite(record), required[name])
        progress.item_done(f"{cell.name} {name} done")
    drive(queue, do, wait=wait, on_poll=progress.update)
    progress.close()
    if not queue.all_done():
        return {}
    doc = _results(cfg, list(methods_budgeted), methods_budgeted, truth, targets, lpips, out_dir, R)
    mirror(out_dir, final_dir)
    return doc


def _finished_cells(out_dir: Path, fingerprints: Dict[Tuple[str, str], str],
                    required: Dict[str, List[str]]) -> List[str]:
    """The units whose receipt vouches for them (every image its method makes: ``required``); a
    line for each one that runs again and why."""
    finished, reruns = [], []
    for (cell, name), fp in fingerprints.items():
        if (out_dir / cell).is_symlink():
            remove(out_dir / cell)
        _, problem = check_receipt(out_dir / cell / name, CELL_RECEIPT, fp, required[name])
        if problem is None:
            finished.append(f"{cell}.{name}")
        elif problem != "missing":
            reruns.append((f"{cell} {name}", str(out_dir / cell / name), problem))
    if is_main():
        say_reruns("benchmark", reruns, lambda s: print(s, file=sys.stderr, flush=True))
    return finished


def _results(cfg: BenchmarkConfig, names: List[str], methods_budgeted, truth, targets, lpips, out_dir: Path,
             R: int) -> dict:
    """``results.json`` from every cell's receipt, the degraded inputs scored beside them."""
    seeds = list(cfg.seeds)
    results: Dict[str, Dict[str, dict]] = {}
    for cell in targets:
        results[cell] = {"input": dict(per_seed={s: score(at_size(targets[cell][s], R), truth[s], lpips,
                                                          cfg.identity) for s in seeds})}
        for name in names:
            receipt = read_record(out_dir / cell / name / CELL_RECEIPT, ReceiptRecord).model_dump()
            results[cell][name] = {k: v for k, v in receipt.items() if k not in ("files", "per_seed_mean")}
            if "per_seed_mean" in receipt:
                results[cell][f"{name}{MEAN_ROW}"] = dict(results[cell][name], per_seed=receipt["per_seed_mean"])
    rows = [r for n in names for r in (n, f"{n}{MEAN_ROW}") if r in next(iter(results.values()), {})]
    summary = summarize(results, rows)
    doc = dict(seeds=seeds, truncation_psi=cfg.truncation_psi, budget=cfg.budget, resolution=R,
               methods={n: m.model_dump() for n, m in methods_budgeted.items()}, rows=rows, cells=results, **summary)
    write_json(out_dir / "results.json", _finite(doc))
    return json.loads(json.dumps(_finite(doc)))


def _mean(values) -> Optional[float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summarize(results: Dict[str, Dict[str, dict]], methods: List[str]) -> dict:
    """Per cell and method the mean of each score over seeds; per method the mean over cells
    (the headline) and how many cells it wins on LPIPS."""
    table: Dict[str, Dict[str, dict]] = {}
    for cell, by_method in results.items():
        table[cell] = {}
        for name, rec in by_method.items():
            per_seed = list(rec["per_seed"].values())
            table[cell][name] = {k: _mean(p.get(k) for p in per_seed) for k in SCORES}
            table[cell][name].update({k: _mean(p.get(k) for p in per_seed) for k in FOUND
                                      if any(k in p for p in per_seed)})
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
    return dict(table=table, headline=headline, blind=blind_vs_known(table, methods))


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
