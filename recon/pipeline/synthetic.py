"""The synthetic stage: faces sampled from the generator (so the truth is known), restored over a grid
of step counts x latent-distance weights.

Layout: ``<out>/truth/seedNNNN.png``; per cell ``<out>/steps<N>_reg<w>/seedNNNN/`` (a
restoration, :meth:`recon.restore.method.Restoration.save`); ``runs.json``.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from recon.config import ProjectorConfig, Synthetic
from recon.data.imageio import from_uint8, save_png, to_uint8, write_json
from recon.model import load_models
from recon.restore import make_method, method_class
from recon.restore.randomness import TorchRandom

from .distributed import Group, Rank
from .progress import slow_settings_warning


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


def synthetic_stage(params: Synthetic, base_cfg: ProjectorConfig, out_dir, weights="weights",
                    device: str = "cpu", group: Optional[Group] = None) -> dict:
    """Sample one image per seed, then restore all of them for every (num_steps, reg weight) cell
    of the grid (``num_steps``: the method's budget of steps, :meth:`Method.budgeted`); the output
    folder is made anew. With a ``group`` each rank takes every world-th cell and rank 0 writes
    ``runs.json`` once all are done."""
    rank = group.rank if group is not None else Rank()
    if group is not None:
        device = group.device
    out_dir = Path(out_dir)
    if rank.is_main:
        shutil.rmtree(out_dir, ignore_errors=True)
    if group is not None:
        group.barrier()
    G, vgg = load_models(weights, device)
    seeds, psi = list(params.seeds), params.truncation_psi
    truth = sample_faces(G, seeds, psi)
    if rank.is_main:
        for s, img in zip(seeds, truth):
            save_png(out_dir / "truth" / f"seed{s:04d}.png", img)
    targets = from_uint8(truth).to(device)
    grid = [(steps, reg) for steps in params.num_steps for reg in params.latent_dist_reg_weight]
    warning = slow_settings_warning(device, G.img_resolution, len(seeds) * len(grid), max(params.num_steps))
    if warning and rank.is_main:
        print(f"synthetic: warning: {warning}", file=sys.stderr, flush=True)
    names = [f"seed{s:04d}" for s in seeds]
    tags = {cell: f"steps{int(cell[0])}_reg{float(cell[1]):g}" for cell in grid}
    for k, (steps, reg) in enumerate(grid, 1):
        if (k - 1) % rank.world != rank.rank:
            continue
        cfg = method_class(base_cfg).budgeted(base_cfg.model_copy(update=dict(latent_dist_reg_weight=reg)), steps)
        label = f"synthetic run {k}/{len(grid)} (steps {steps}, reg {reg:g})"
        results = make_method(G, vgg, cfg).restore(targets, names=names, rngs=[TorchRandom(cfg.seed) for _ in seeds],
                                                   desc=rank.label(label))
        for res in results:
            res.save(out_dir / tags[steps, reg] / res.name)
        print(f"{rank.label(label)} done: mean distance {np.mean([r.history[-1]['dist'] for r in results]):.4g}",
              file=sys.stderr, flush=True)
    runs = {tags[steps, reg]: dict(num_steps=int(steps), latent_dist_reg_weight=float(reg), faces=names)
            for steps, reg in grid}
    if group is not None:
        group.barrier()
    if rank.is_main:
        write_json(out_dir / "runs.json", dict(seeds=seeds, truncation_psi=psi, runs=runs))
    return runs
