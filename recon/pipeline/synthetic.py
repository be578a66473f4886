"""The synthetic stage: faces sampled from the generator (so the truth is known), restored over a grid
of step counts x latent-distance weights.

Layout: ``<out>/truth/seedNNNN.png``; per cell ``<out>/steps<N>_reg<w>/seedNNNN/`` (a restoration,
:meth:`recon.restore.method.Restoration.save`) and ``cell.json`` (its receipt); ``runs.json``.
Each cell is a unit of work (:mod:`recon.pipeline.units`) of cost steps x seeds: any number of
workers share the grid, costliest cells first, and a finished cell is kept across runs.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from recon.config import ProjectorConfig, Runtime, Synthetic
from recon.data.imageio import from_uint8, save_png, to_uint8, write_json
from recon.data.ownfiles import own_dir, remove
from recon.model import load_models
from recon.model.weights import resolve_weights
from recon.progress import StageProgress, slow_settings_warning
from recon.restore import make_method, method_class
from recon.restore.randomness import TorchRandom

from . import distributed
from .publish import mirror
from .records import check_receipt, say_reruns, write_receipt
from .units import Unit, WorkQueue, drive

RECEIPT = "cell.json"


def sample_faces(G, seeds, psi: float) -> np.ndarray:
    """``uint8 [N, R, R, 3]`` faces from ``RandomState(seed)`` z, truncation ``psi``, the
    generator's constant noise; one seed at a time, so a face does not depend on the others."""
    device = next(G.parameters()).device
    out = []
    with torch.no_grad():
        for s in seeds:
            z = torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)).to(device)
            out.append(to_uint8(G.synthesis(G.mapping(z, None, truncation_psi=psi), noise_mode="const"))[0])
    return np.stack(out)


def cell_tag(steps: int, reg: float) -> str:
    return f"steps{int(steps)}_reg{float(reg):g}"


def synthetic_stage(params: Synthetic, base_cfg: ProjectorConfig, out_dir, weights="weights",
                    device: str = "cpu", runtime: Runtime = Runtime(), wait: bool = True, state_dir=None) -> dict:
    """Sample one image per seed, then restore all of them for every (num_steps, reg weight) cell
    of the grid (``num_steps``: the method's budget of steps, :meth:`Method.budgeted`), as one of
    any number of workers. ``wait``: return once every cell is done, then write ``runs.json``.
    ``state_dir``: where the work is done (default ``out_dir``), mirrored into ``out_dir`` once
    every cell is (:mod:`recon.pipeline.publish`)."""
    final_dir = Path(out_dir)
    out_dir = Path(state_dir) if state_dir is not None else final_dir      # where the cells are made
    out_dir.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()
    files = resolve_weights(weights)
    seeds, psi = list(params.seeds), params.truncation_psi
    names = [f"seed{s:04d}" for s in seeds]
    grid = [(steps, reg) for steps in params.num_steps for reg in params.latent_dist_reg_weight]
    method = method_class(base_cfg)
    cfgs = {cell_tag(n, r): method.budgeted(base_cfg.model_copy(update=dict(latent_dist_reg_weight=r)), n)
            for n, r in grid}
    fingerprints = {tag: hashlib.sha256(json.dumps([method_class(c).fingerprint(c), files.digest, seeds, psi])
                                        .encode()).hexdigest()[:24] for tag, c in cfgs.items()}
    required = {tag: [f"{name}/{f}" for name in names for f in method_class(c).result_files(c)]
                for tag, c in cfgs.items()}
    finished, reruns = set(), []
    for tag in cfgs:
        _, problem = check_receipt(out_dir / tag, RECEIPT, fingerprints[tag], required[tag])
        if problem is None:
            finished.add(tag)
        elif problem != "missing":
            reruns.append((tag, str(out_dir / tag), problem))
    if main:
        say_reruns("synthetic", reruns, lambda s: print(s, file=sys.stderr, flush=True))
    queue = WorkQueue(out_dir, runtime.lease_s, say=lambda s: print(f"synthetic: {s}", file=sys.stderr, flush=True))
    key = hashlib.sha256(json.dumps(sorted(fingerprints.items())).encode()).hexdigest()
    units = [Unit(cell_tag(n, r), float(n * len(seeds)), dict(num_steps=int(n), reg=float(r))) for n, r in grid]
    queue.open(key, lambda meta: [] if meta else units, {}, done=sorted(finished))
    queue.reopen([t for t in cfgs if t not in finished])
    made: Dict[str, object] = {}

    def models():
        if not made:
            G, vgg = load_models(files, device)
            truth = sample_faces(G, seeds, psi)
            for name, img in zip(names, truth):
                save_png(own_dir(out_dir / "truth") / f"{name}.png", img)
            made.update(G=G, vgg=vgg, targets=from_uint8(truth).to(device))
            warning = slow_settings_warning(device, G.img_resolution, len(seeds) * len(grid), max(params.num_steps))
            if warning and main:
                print(f"synthetic: warning: {warning}", file=sys.stderr, flush=True)
        return made

    progress = StageProgress("synthetic", len(units), len(queue.done_ids()), unit="cells", enabled=main,
                             count_done=lambda: len(queue.done_ids()))

    def do(unit: Unit) -> None:
        m = models()
        cfg = cfgs[unit.id]
        folder = out_dir / unit.id
        remove(folder)
        steps = method_class(cfg).total_steps(cfg)
        results = make_method(m["G"], m["vgg"], cfg).restore(m["targets"], names=names,
                                                             rngs=[TorchRandom(cfg.seed) for _ in seeds],
                                                             on_step=progress.track(1, steps))
        saved: List[str] = []
        for res in results:
            saved += [f"{res.name}/{f}" for f in res.save(own_dir(folder / res.name))]
        write_receipt(folder, RECEIPT, dict(fingerprint=fingerprints[unit.id], **unit.data), saved)
        progress.write(f"{unit.id} done: mean distance {np.mean([r.history[-1]['dist'] for r in results]):.4g}")
    drive(queue, do, wait=wait, on_poll=progress.update)
    progress.close()
    runs = {tag: dict(num_steps=int(n), latent_dist_reg_weight=float(r), faces=names)
            for (n, r), tag in zip(grid, cfgs)}
    if queue.all_done():
        for stale in out_dir.iterdir():
            if (stale.is_dir() or stale.is_symlink()) and stale.name not in {*runs, "truth", ".work"}:
                remove(stale)
        if not (out_dir / "truth").is_dir():        # every cell was done before: the truth is still needed
            models()
        write_json(out_dir / "runs.json", dict(seeds=seeds, truncation_psi=psi, runs=runs))
        mirror(out_dir, final_dir)
    return runs
