"""The project@<mode> stage: restore every degraded target of a mode, in batches; resumable.

Layout: ``<out>/<face>/`` holds the method's result (:meth:`recon.restore.method.Restoration.save`:
``image.png``, ``degraded.png``, ``latents.npz``, ``loss.csv``, earlier phases' images), the
``target.png`` it was restored from, ``progress/stepNNNNN.png`` (the current run's snapshots) and
``done.json``, the receipt written last: a fingerprint of everything that produced the result and
the sha256 of each file. ``<out>/.snapshots/`` holds the snapshots of interrupted batches.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from recon.config import ProjectorConfig, Runtime
from recon.data.imageio import PhotoError, from_uint8, load_photo, save_png, to_uint8
from recon.errors import ParamsError
from recon.model import load_models
from recon.model.checkpoint import read_config
from recon.model.networks import latent_shapes
from recon.model.weights import resolve_weights, sha256_of
from recon.restore import make_method, method_class
from recon.restore.method import snapshot_step, stack_starts
from recon.restore.randomness import TorchRandom

from .degrade import degradation_for
from .distributed import Group, Rank
from .progress import StageProgress, slow_settings_warning
from .records import OTHER_SETTINGS, Target, Targets, check_receipt, write_receipt
from .runtime import resolve_batch
from .starts import init_path, read_init, require_init

RECEIPT = "done.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class _Work:
    """What a batch needs, read and checked before any model is loaded."""
    targets: Targets
    images: Dict[str, torch.Tensor]            # face -> [1, 3, R, R] target in [-1, 1]
    starts: Dict[str, Optional[torch.Tensor]]  # face -> starting latent, or None (w_avg)
    fingerprints: Dict[str, str]


def face_fingerprint(cfg: ProjectorConfig, targets: Targets, face: Target, degraded_dir, weights_digest: str,
                     start: Optional[Path]) -> str:
    """Everything a face's result depends on: the method's settings, the weights, the mode's ops,
    the target and mask files, and the starting latent's file."""
    h = hashlib.sha256()
    if start is not None and start.is_file():
        h.update(sha256_of(start).encode())
    h.update(method_class(cfg).fingerprint(cfg).encode())
    h.update(weights_digest.encode())
    h.update(json.dumps(targets.ops, sort_keys=True).encode())
    h.update(sha256_of(Path(degraded_dir) / face.degraded).encode())
    if face.mask:
        h.update(sha256_of(Path(degraded_dir) / face.mask).encode())
    return h.hexdigest()[:24]


def project_stage(mode: str, cfg: ProjectorConfig, degraded_dir, out_dir, weights="weights",
                  runtime: Runtime = Runtime(batch_size=1, compile="off"), device: str = "cpu", replace: bool = True,
                  group: Optional[Group] = None) -> List[str]:
    """Restore every degraded target of a mode, in batches; the pipeline's stage and ``recon
    project`` both run this. Returns the names restored by this process.

    ``weights``: the download_weights folder, or a ``(generator, vgg16)`` pair of paths.
    ``runtime``: the batch size and ``compile`` setting (:mod:`recon.restore.compiled`);
    ``device``: a resolved device (:func:`recon.pipeline.runtime.resolve_device`).

    A finished face is skipped when its ``done.json`` vouches for it (the current fingerprint,
    every file with its recorded digest); otherwise it runs again, with a line saying why. An
    interrupted batch resumes from its snapshot. With ``replace`` (the pipeline, which owns its
    output folder) results made with other settings are recomputed and those of faces that are
    no longer targets removed; without it (the command line) a result made with other settings is
    refused and other folders are left alone.

    Batches are cut from the list of all targets, so a face is always optimized with the same
    companions (and gives the same bits) however many workers share the work; with a ``group``
    each rank takes every world-th pending batch, and all ranks meet at a barrier at the end.
    """
    rank = group.rank if group is not None else Rank()
    if group is not None:
        device = group.device
    degraded_dir, out_dir = Path(degraded_dir), Path(out_dir)
    targets = Targets.load(degraded_dir)
    files = resolve_weights(weights)
    G_config = read_config(files.generator)
    R = G_config["img_resolution"]
    faces = targets.faces
    starts = {f.name: init_path(cfg, f.name, out_dir) for f in faces}
    fingerprints = {f.name: face_fingerprint(cfg, targets, f, degraded_dir, files.digest, starts[f.name])
                    for f in faces}
    finished = finished_faces(mode, faces, out_dir, fingerprints, replace, say=rank.is_main)

    models = None
    if runtime.batch_size == "auto" and device.startswith("cuda"):
        models = load_models(files, device)         # to measure the batch that fits
    batch_size = resolve_batch(runtime, device, *(models or ()))
    batches = [faces[i:i + batch_size] for i in range(0, len(faces), batch_size)]
    # A batch runs whole whenever one of its faces is not done: a face's bits depend on the
    # companions it was optimized with (batched convolutions round differently), so a redone
    # face gets the bits it first had; its finished companions are recomputed, not rewritten.
    pending = [b for b in batches if any(f.name not in finished for f in b)]
    mine = rank.share(pending)
    todo = sum(f.name not in finished for b in pending for f in b)
    work = _read_work(mode, cfg, targets, [f for b in mine for f in b], degraded_dir, starts, fingerprints,
                      R, latent_shapes(G_config))
    if rank.is_main and todo < len(faces):
        log(f"project {mode}: {len(faces) - todo} of {len(faces)} faces already done")
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank.is_main and replace:
        _remove_stale(out_dir, {f.name for f in faces})
    snap_dir = out_dir / ".snapshots"
    snap_dir.mkdir(exist_ok=True)
    if group is not None:
        group.barrier()   # every rank has read what is done before any rank writes a result

    done: List[str] = []
    if mine:
        from recon.restore.compiled import resolve_compile

        cls = method_class(cfg)
        compiled = cls.compilable and resolve_compile(runtime.compile, device, cls.steps(cfg), R)
        G, vgg = models or load_models(files, device)
        method = make_method(G, vgg, cfg, compile=compiled)
        steps = cls.steps(cfg)
        if compiled and rank.is_main:
            log(f"project {mode}: compiling the projection step (project.runtime.compile: {runtime.compile}); "
                "the first step waits for it, minutes the first time")
        warning = slow_settings_warning(device, R, todo, steps)
        if warning and rank.is_main:
            log(f"project {mode}: warning: {warning}")
        pending_names = [f.name for batch in pending for f in batch if f.name not in finished]
        count_done = ((lambda: len(faces) - todo + sum((out_dir / n / RECEIPT).is_file() for n in pending_names))
                      if rank.world > 1 else None)
        progress = StageProgress(f"project {mode}", len(faces), len(faces) - todo, steps,
                                 enabled=rank.is_main, count_done=count_done, workers=rank.world)
        for batch in mine:
            done += _restore_batch(mode, method, work, batch, finished, degraded_dir, out_dir, snap_dir, R, progress)
        progress.close()
    if group is not None:
        group.barrier()   # rank 0 writes the summary once every rank is done
    if rank.is_main and snap_dir.is_dir() and not any(snap_dir.iterdir()):
        snap_dir.rmdir()
    return done


def finished_faces(mode: str, faces: List[Target], out_dir: Path, fingerprints: Dict[str, str], replace: bool,
                   say: bool = True) -> set:
    """The faces whose receipt vouches for their result; a line for each one that runs again and
    why. A result made with other settings is refused unless ``replace``."""
    finished = set()
    for face in faces:
        _, problem = check_receipt(out_dir / face.name, RECEIPT, fingerprints[face.name])
        if problem is None:
            finished.add(face.name)
        elif problem == OTHER_SETTINGS and not replace:
            raise ParamsError(f"{out_dir / face.name}: already holds a result made with other settings or inputs "
                              "(add --force to replace it)")
        elif problem != "missing" and say:
            log(f"project {mode}: {face.name} runs again: {out_dir / face.name}: {problem}")
    return finished


def _remove_stale(out_dir: Path, names: set) -> None:
    """The results of faces that are no longer targets."""
    for stale in out_dir.iterdir():
        if stale.is_dir() and not stale.name.startswith(".") and stale.name not in names:
            shutil.rmtree(stale)


def _read_work(mode, cfg, targets, faces, degraded_dir, starts, fingerprints, R, shapes) -> _Work:
    """Read this process's targets and starting latents, refusing any that cannot be used."""
    cls = method_class(cfg)
    images: Dict[str, torch.Tensor] = {}
    latents: Dict[str, Optional[torch.Tensor]] = {}
    for face in faces:
        rgb, _ = load_photo(degraded_dir / face.degraded)
        if rgb.shape[:2] != (R, R):
            raise PhotoError(f"{degraded_dir / face.degraded}: target is {rgb.shape[1]}x{rgb.shape[0]}, the "
                             f"generator makes {R}x{R} "
                             f"(align faces at {R} px: align.resolution in params.yaml, --size of recon align)")
        images[face.name] = from_uint8(rgb)
        path = starts[face.name]
        latents[face.name] = None
        if path is not None:
            require_init(path, mode)
            latent = latents[face.name] = read_init(path, cls.init_keys, shapes, mode)
            problem = cls.start_problem(cfg, latent)
            if problem:
                raise ParamsError(f"{path}: {problem} (params.yaml: project.{mode}.init and "
                                  f"project.{mode}.latent_space)")
    return _Work(targets, images, latents, fingerprints)


def _prepare_face_dirs(out_dir: Path, batch: List[Target], start_step: int) -> None:
    """Before a batch runs: a fresh start clears each face's folder (what is there is stale); a
    resumed one keeps the progress images up to its snapshot and drops later ones (left by a
    longer run that was interrupted)."""
    for face in batch:
        folder = out_dir / face.name
        if start_step == 0:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        for img in (folder / "progress").glob("step*.png"):
            if not img.stem[4:].isdigit() or int(img.stem[4:]) > start_step:
                img.unlink()


def _restore_batch(mode, method, work: _Work, batch: List[Target], finished: set, degraded_dir, out_dir, snap_dir,
                   R, progress) -> List[str]:
    names = [f.name for f in batch]
    todo = [f for f in batch if f.name not in finished]
    d = degradation_for(work.targets, batch, degraded_dir, R)
    starts = [s for s in (work.starts[n] for n in names) if s is not None]
    init = stack_starts(starts, method.G.num_ws) if starts else None
    key = hashlib.sha256("|".join(work.fingerprints[n] for n in names).encode()).hexdigest()[:16]
    snap = snap_dir / f"{key}.pt"
    start_step = snapshot_step(snap)
    _prepare_face_dirs(out_dir, todo, start_step)

    def save_progress(step, images):
        for face, img in zip(batch, to_uint8(images)):
            if face.name not in finished:
                save_png(out_dir / face.name / "progress" / f"step{step:05d}.png", img)

    results = method.restore(torch.cat([work.images[n] for n in names]), d, names=names,
                             rngs=[TorchRandom(method.cfg.seed) for _ in batch], init=init, snapshot_path=snap,
                             on_snapshot=save_progress, on_step=progress.batch(len(todo), start_step))
    for face, res in zip(batch, results):
        if face.name in finished:
            continue
        folder = out_dir / face.name
        files = res.save(folder)
        save_png(folder / "target.png", to_uint8(work.images[face.name])[0])
        write_receipt(folder, RECEIPT, dict(fingerprint=work.fingerprints[face.name], mode=mode,
                                            config=method.cfg.model_dump(), target=asdict(face)),
                      files + ["target.png"])
        progress.face_done(face.name, res.history)
    progress.batch_done()
    snap.unlink(missing_ok=True)
    return [f.name for f in todo]
