"""What the DVC stages do, as functions (the scripts in ``stages/`` only read params and call these).

Layout on disk:
  data/aligned/<face>.png, manifest.json           (align)
  data/degraded/<mode>/<face>.png, <face>_mask.png, targets.json   (degrade@mode)
  data/projected/<mode>/<face>/image.png, degraded.png, latents.npz, loss.csv, done.json,
                              progress/stepNNNNN.png (one per snapshot)   (project@mode)
  data/synthetic/...                               (synthetic)
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import List

import numpy as np
import torch

from .degrade import (Degradation, DegradationError, centre_mask, from_uint8, mask_from_color, mask_from_file,
                      parse_chain, to_uint8)
from .imageio import PhotoError, load_photo, save_png, write_atomic
from .projector import Projector, ProjectorConfig, TorchRandom
from .weights import sha256_of


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_json(path, data) -> None:
    text = json.dumps(data, indent=1, sort_keys=True)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def default_batch_size(device: str) -> int:
    """Targets per forward pass for ``batch_size: auto``: measured on CPU, a batch costs more per
    target than one at a time, so batch only on CUDA."""
    return 4 if resolve_device(device) == "cuda" else 1


def aligned_faces(aligned_dir) -> List[dict]:
    """The faces the align stage wrote, from its manifest: ``[{name, file, photo, quad, mask}]``."""
    aligned_dir = Path(aligned_dir)
    manifest_path = aligned_dir / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: missing (run the align stage first)")
    manifest = json.loads(manifest_path.read_text())
    faces = []
    for photo, entry in sorted(manifest["images"].items()):
        for f in entry["faces"]:
            faces.append(dict(name=Path(f["file"]).stem, file=str(aligned_dir / f["file"]), photo=photo,
                              quad=f["quad"], mask=str(aligned_dir / f["mask"]) if f.get("mask") else None))
    return faces


# ----------------------------------------------------------------------------------------------
# degrade@mode

def mode_ops(spec: dict) -> List[dict]:
    """A mode's params -> the op chain: ``{type: blur, kernel, sigma}``, ``{type: chain, ops: [...]}``..."""
    spec = dict(spec)
    if spec.get("type") == "chain":
        return parse_chain(spec.get("ops") or [])
    return parse_chain(spec)


def _mask_for(face: dict, op: dict, rgb: np.ndarray) -> (torch.Tensor, str):
    size = rgb.shape[0]
    source = op.get("source", "center")
    if source == "file" and face["mask"]:
        return mask_from_file(face["mask"], size), "file"
    if source == "color":
        return mask_from_color(rgb, op.get("color", [0, 255, 0]), int(op.get("tolerance", 8))), "color"
    if source not in ("center", "file", "color"):
        raise DegradationError(f"mask source must be center, file or color, got {source!r}")
    return centre_mask(size, float(op.get("fraction", 0.4))), "center"


def degrade_stage(mode: str, spec: dict, aligned_dir, out_dir, seed: int = 0) -> dict:
    """Write each aligned face's degraded target as an 8-bit PNG (plus its mask) and targets.json."""
    from tqdm import tqdm

    ops = mode_ops(spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for face in tqdm(aligned_faces(aligned_dir), desc=f"degrade {mode}", unit="face"):
        rgb, _ = load_photo(face["file"])
        if rgb.shape[0] != rgb.shape[1]:
            raise PhotoError(f"{face['file']}: aligned faces must be square, got {rgb.shape[1]}x{rgb.shape[0]}")
        mask = mask_source = None
        mask_op = next((op for op in ops if op["type"] == "mask"), None)
        if mask_op is not None:
            mask, mask_source = _mask_for(face, mask_op, rgb)
        try:
            d = Degradation(ops, rgb.shape[0], masks=mask, seed=seed)
        except DegradationError as exc:
            raise DegradationError(f"degrade.{mode} on {face['file']}: {exc}") from exc
        degraded = to_uint8(d.target(from_uint8(rgb)))[0]
        save_png(out_dir / f"{face['name']}.png", degraded)
        rec = dict(name=face["name"], source=face["file"], photo=face["photo"], quad=face["quad"],
                   degraded=f"{face['name']}.png", mask=None, mask_source=mask_source)
        if mask is not None:
            rec["mask"] = f"{face['name']}_mask.png"
            save_png(out_dir / rec["mask"], np.where(mask[0, 0].numpy() > 0.5, 0, 255).astype(np.uint8))
        records.append(rec)
    targets = dict(mode=mode, ops=ops, seed=seed, faces=records)
    write_json(out_dir / "targets.json", targets)
    return targets


def load_targets(degraded_dir) -> dict:
    path = Path(degraded_dir) / "targets.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the degrade stage first)")
    return json.loads(path.read_text())


def degradation_for(targets: dict, faces: List[dict], degraded_dir, size: int) -> Degradation:
    masks = None
    if any(op["type"] == "mask" for op in targets["ops"]):
        masks = torch.cat([mask_from_file(Path(degraded_dir) / f["mask"], size) for f in faces])
    return Degradation(targets["ops"], size, masks=masks, seed=int(targets.get("seed", 0)))


# ----------------------------------------------------------------------------------------------
# project@mode

def projector_config(params: dict) -> ProjectorConfig:
    """Build a ProjectorConfig from a params dict, refusing unknown keys (typos must not pass)."""
    names = {f.name for f in fields(ProjectorConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown projector params {unknown}; known: {sorted(names)}")
    types = {f.name: f.type for f in fields(ProjectorConfig)}
    conv = {"int": int, "float": float, "str": str, "bool": bool}
    return ProjectorConfig(**{k: conv[types[k]](v) if types[k] in conv else v for k, v in params.items()}).validate()


def load_models(weights_dir, device):
    from .checkpoint import load_generator
    from .perceptual import VGGFeatures, load_vgg16

    weights_dir = Path(weights_dir)
    G = load_generator(weights_dir / "generator.safetensors", device=device)
    return G, VGGFeatures(load_vgg16(weights_dir / "vgg16.pt", device))


def _face_fingerprint(cfg: ProjectorConfig, targets: dict, face: dict, degraded_dir, weights_digest: str) -> str:
    h = hashlib.sha256()
    h.update(cfg.fingerprint().encode())
    h.update(weights_digest.encode())
    h.update(json.dumps(targets["ops"], sort_keys=True).encode())
    h.update(sha256_of(Path(degraded_dir) / face["degraded"]).encode())
    if face.get("mask"):
        h.update(sha256_of(Path(degraded_dir) / face["mask"]).encode())
    return h.hexdigest()[:24]


def project_stage(mode: str, cfg: ProjectorConfig, degraded_dir, out_dir, weights_dir="weights",
                  batch_size: int = 4, device: str = "auto") -> List[str]:
    """Project every degraded target of a mode, in batches; resumable.

    Finished faces carry ``done.json`` with a fingerprint of everything that produced them and are
    skipped on rerun; an interrupted batch resumes from its snapshot; results of faces that are no
    longer targets are removed. Returns the names projected in this run.
    """
    device = resolve_device(device)
    targets = load_targets(degraded_dir)
    degraded_dir, out_dir = Path(degraded_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    G, features = load_models(weights_dir, device)
    R = G.img_resolution

    faces = targets["faces"]
    names = {f["name"] for f in faces}
    for stale in out_dir.iterdir():
        if stale.is_dir() and not stale.name.startswith(".") and stale.name not in names:
            shutil.rmtree(stale)

    # The weights are hashed once per run, not once per face (the FFHQ generator is 120 MB).
    weights_digest = "".join(sha256_of(Path(weights_dir) / n) for n in ("generator.safetensors", "vgg16.pt"))
    pending = []
    for face in faces:
        fp = _face_fingerprint(cfg, targets, face, degraded_dir, weights_digest)
        done = out_dir / face["name"] / "done.json"
        if done.is_file() and json.loads(done.read_text()).get("fingerprint") == fp:
            continue
        rgb, _ = load_photo(degraded_dir / face["degraded"])
        if rgb.shape[:2] != (R, R):
            raise ValueError(f"{degraded_dir / face['degraded']}: target is {rgb.shape[1]}x{rgb.shape[0]}, the "
                             f"generator makes {R}x{R} (set align.size to {R})")
        pending.append((face, fp, from_uint8(rgb)))
    if len(pending) < len(faces):
        log(f"project {mode}: {len(faces) - len(pending)} faces already done, {len(pending)} to go")

    projector = Projector(G, features, cfg)
    snap_dir = out_dir / ".snapshots"
    done_names = []
    for start in range(0, len(pending), max(1, batch_size)):
        chunk = pending[start:start + batch_size]
        batch_faces = [f for f, _, _ in chunk]
        imgs = torch.cat([img for _, _, img in chunk])
        d = degradation_for(targets, batch_faces, degraded_dir, R)
        key = hashlib.sha256("|".join(fp for _, fp, _ in chunk).encode()).hexdigest()[:16]
        snap = snap_dir / f"{key}.pt"
        snap_dir.mkdir(exist_ok=True)
        def save_progress(step, images, batch_faces=batch_faces):
            for face, img in zip(batch_faces, to_uint8(images)):
                save_png(out_dir / face["name"] / "progress" / f"step{step:05d}.png", img)

        results = projector.project(imgs, degradation=d, names=[f["name"] for f in batch_faces],
                                    rngs=[TorchRandom(cfg.seed) for _ in batch_faces], snapshot_path=snap,
                                    on_snapshot=save_progress)
        for (face, fp, _), res in zip(chunk, results):
            res.save(out_dir / face["name"])
            write_json(out_dir / face["name"] / "done.json", dict(fingerprint=fp, mode=mode, config=asdict(cfg),
                                                                 target=face))
            done_names.append(face["name"])
        snap.unlink(missing_ok=True)
    if snap_dir.is_dir() and not any(snap_dir.iterdir()):
        snap_dir.rmdir()
    return done_names


# ----------------------------------------------------------------------------------------------
# synthetic: invert generated images over a grid of num_steps x latent_dist_reg_weight

def synthetic_stage(params: dict, base_cfg: dict, out_dir, weights_dir="weights", device: str = "auto") -> dict:
    """Sample one image per seed, then invert all of them for every (num_steps, reg weight) pair."""
    device = resolve_device(device)
    out_dir = Path(out_dir)
    G, features = load_models(weights_dir, device)
    seeds = [int(s) for s in params["seeds"]]
    psi = float(params.get("truncation_psi", 1.0))
    z = torch.cat([torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)) for s in seeds]).to(device)
    with torch.no_grad():
        truth = G.synthesis(G.mapping(z, None, truncation_psi=psi), noise_mode="const")
    truth_u8 = to_uint8(truth)
    for s, img in zip(seeds, truth_u8):
        save_png(out_dir / "truth" / f"seed{s:04d}.png", img)
    targets = from_uint8(truth_u8).to(device)
    runs = {}
    for steps in params["num_steps"]:
        for reg in params["latent_dist_reg_weight"]:
            cfg = projector_config(dict(base_cfg, num_steps=int(steps), latent_dist_reg_weight=float(reg)))
            tag = f"steps{int(steps)}_reg{float(reg):g}"
            results = Projector(G, features, cfg).project(
                targets, names=[f"seed{s:04d}" for s in seeds], rngs=[TorchRandom(cfg.seed) for _ in seeds])
            for res in results:
                res.save(out_dir / tag / res.name)
            runs[tag] = dict(num_steps=int(steps), latent_dist_reg_weight=float(reg),
                             faces=[r.name for r in results])
    write_json(out_dir / "runs.json", dict(seeds=seeds, truncation_psi=psi, runs=runs))
    return runs
