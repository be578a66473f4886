"""The project@<mode> stage: restore every degraded target of a mode, in batches; resumable.

Layout: ``<out>/<face>/`` holds the method's result (:meth:`recon.restore.method.Restoration.save`:
``image.png``, ``degraded.png``, ``latents.npz``, ``loss.csv``, earlier phases' images), the
``target.png`` it was restored from, ``progress/stepNNNNN.png`` (the current run's snapshots) and
``done.json``, the receipt written last: a fingerprint of everything that produced the result and
the sha256 of each file. ``<out>/.snapshots/`` holds the snapshots of interrupted batches,
``<out>/.work/`` the stage's units of work (:mod:`recon.pipeline.units`): one per batch, cut once
from the fixed order of the faces with one batch size recorded in the plan, so any number of
workers, started by anything, restore every face exactly once and give the bytes one worker
gives.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from recon.config import ProjectorConfig, Runtime, observed_size, params_key
from recon.data.imageio import PhotoError, from_uint8, load_photo, save_png, to_uint8
from recon.data.ownfiles import own_dir, remove
from recon.errors import ParamsError
from recon.model import load_models
from recon.model.checkpoint import read_config
from recon.model.networks import latent_shapes
from recon.model.weights import resolve_weights, sha256_of
from recon.progress import StageProgress, slow_settings_warning
from recon.restore import make_method, method_class
from recon.restore.degrade import parse_ops
from recon.restore.method import snapshot_step, stack_starts
from recon.restore.randomness import TorchRandom

from . import distributed
from .degrade import degradation_for
from .faults import fault_point
from .publish import mirror
from .records import OTHER_SETTINGS, Target, Targets, check_receipt, say_reruns, write_receipt
from .runtime import resolve_batch
from .starts import init_path, read_init, read_tuning, require_init
from .units import Unit, WorkQueue, check_batch, drive

RECEIPT = "done.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class _Work:
    """What the batches need, checked before any model is loaded."""
    targets: Targets
    degraded_dir: Path
    R: int
    starts: Dict[str, Optional[torch.Tensor]]  # face -> starting latent, or None (w_avg)
    tunings: Dict[str, Optional[dict]]         # face -> the tuning its starting latent was found with
    fingerprints: Dict[str, str]
    finished: set                              # faces whose receipt vouches for their result
    required: Dict[str, List[str]]             # face -> the files its receipt must vouch for

    def image(self, face: Target) -> torch.Tensor:
        """The face's target ``[1, 3, h, h]`` in [-1, 1], as its 8-bit file holds it (``h``: the
        observation's size, the generator's unless a downsample made it smaller)."""
        rgb, _ = load_photo(self.degraded_dir / face.degraded)
        h = observed_size(parse_ops(self.targets.ops_of(face)), self.R)
        if rgb.shape[:2] != (h, h):
            raise PhotoError(f"{self.degraded_dir / face.degraded}: target is {rgb.shape[1]}x{rgb.shape[0]}, the "
                             f"generator makes {self.R}x{self.R}" + (f" and this mode observes {h}x{h}" if h != self.R
                                                                    else "")
                             + f" (align faces at {self.R} px: {params_key('align.resolution')}, --size of "
                             "recon align)")
        return from_uint8(rgb)


def face_fingerprint(cfg: ProjectorConfig, targets: Targets, face: Target, degraded_dir, weights_digest: str,
                     start: Optional[Path], precision: str = "fp32") -> str:
    """Everything a face's result depends on: the method's settings, the weights, the mode's ops,
    the target and mask files, the starting latent's file, and the precision setting (absent for
    fp32, so exact results keep their fingerprints)."""
    h = hashlib.sha256()
    if precision != "fp32":
        h.update(f"precision={precision}".encode())
    if start is not None and start.is_file():
        h.update(sha256_of(start).encode())
    h.update(method_class(cfg).fingerprint(cfg).encode())
    h.update(weights_digest.encode())
    h.update(json.dumps(targets.ops_of(face), sort_keys=True).encode())
    h.update(sha256_of(Path(degraded_dir) / face.degraded).encode())
    if face.mask:
        h.update(sha256_of(Path(degraded_dir) / face.mask).encode())
    return h.hexdigest()[:24]


def project_stage(mode: str, cfg: ProjectorConfig, degraded_dir, out_dir, weights="weights",
                  runtime: Runtime = Runtime(batch_size=1, compile="off"), device: str = "cpu", replace: bool = True,
                  wait: bool = True, workers: int = 1, state_dir=None) -> List[str]:
    """Restore every degraded target of a mode, in batches, as one of any number of workers; the
    pipeline's stage and ``recon project`` both run this. Returns the names this worker restored.

    ``weights``: the download_weights folder, or a ``(generator, vgg16)`` pair of paths.
    ``runtime``: the batch size, ``compile`` setting and lease; ``device``: this worker's resolved
    device. ``wait``: return only once every unit is done (by any worker), then finalize;
    without it, return when nothing is left to claim. ``workers``: how many workers are expected
    (``batch_size: auto`` cuts at least that many batches). ``state_dir``: where the work is done
    (finished faces, units, snapshots; default the output folder itself), mirrored into
    ``out_dir`` once every unit is done (:mod:`recon.pipeline.publish`).

    A finished face is skipped when its ``done.json`` vouches for it (the current fingerprint,
    every file with its recorded digest); otherwise its batch runs again (whole: a face's bits
    depend on its companions), with a line saying why. An interrupted batch resumes from its
    snapshot. With ``replace`` (the pipeline, which owns its output folder) results made with
    other settings are recomputed and those of faces that are no longer targets removed; without
    it (the command line) a result made with other settings is refused and other folders are left
    alone.
    """
    degraded_dir, out_dir = Path(degraded_dir), Path(out_dir)
    work_dir = Path(state_dir) if state_dir is not None else out_dir
    main = distributed.is_main()
    check_precision(runtime.precision, device)
    targets = Targets.load(degraded_dir)
    files = resolve_weights(weights)
    G_config = read_config(files.generator)
    R = G_config["img_resolution"]
    faces = targets.faces
    start_paths = {f.name: init_path(cfg, f.name, out_dir) for f in faces}
    fingerprints = {f.name: face_fingerprint(cfg, targets, f, degraded_dir, files.digest, start_paths[f.name],
                                             runtime.precision) for f in faces}
    starts, tunings = _read_starts(mode, cfg, faces, start_paths, G_config)
    cls = method_class(cfg)
    required = {f.name: cls.result_files(cfg, starts[f.name]) + ["target.png"] for f in faces}
    finished = finished_faces(mode, faces, work_dir, fingerprints, replace, say=main, required=required)
    work = _Work(targets, degraded_dir, R, starts, tunings, fingerprints, finished, required)
    for face in faces:                          # every target readable and the right size, before any work
        if face.name not in finished:
            work.image(face)

    work_dir.mkdir(parents=True, exist_ok=True)
    queue = WorkQueue(work_dir, runtime.lease_s, say=lambda s: log(f"project {mode}: {s}"))
    steps = cls.total_steps(cfg)
    key = hashlib.sha256("|".join(fingerprints[f.name] for f in faces).encode()).hexdigest()
    models = _plan(queue, key, targets, finished, runtime, device, files, steps, workers)
    by_name = {f.name: f for f in faces}
    todo = [n for n in by_name if n not in finished]
    if main and len(todo) < len(faces):
        log(f"project {mode}: {len(faces) - len(todo)} of {len(faces)} faces already done")
    warning = slow_settings_warning(device, R, len(todo), steps)
    if warning and main:
        log(f"project {mode}: warning: {warning}")

    def count_done() -> float:
        return len(finished.union(*(u.data["faces"] for u in queue.units if queue.is_done(u.id))))
    progress = StageProgress(f"project {mode}", len(faces), int(count_done()), enabled=main, count_done=count_done)
    made = {}

    def do(unit: Unit):
        batch = [by_name[n] for n in unit.data["faces"]]
        # faces another worker finished since this one started (or before it was killed, between
        # writing their receipts and marking the unit done) are done: never projected twice
        work.finished.update(f.name for f in batch if f.name not in work.finished and check_receipt(
            work_dir / f.name, RECEIPT, fingerprints[f.name], required[f.name])[1] is None)
        if all(f.name in work.finished for f in batch):
            log(f"project {mode}: {unit.id}: every face is already done (their receipts vouch for them)")
            return _snapshot_remover(work, batch, work_dir)
        if "method" not in made:
            from recon.restore.compiled import resolve_compile

            compiled = resolve_compile(runtime.compile, device) if cls.compilable else False
            if compiled is True and main:
                log(f"project {mode}: compiling the projection step (project.runtime.compile: {runtime.compile}); "
                    "the first step waits for it, minutes the first time")
            G, vgg = models or load_models(files, device)
            from .gate import resolve_precision

            chosen = resolve_precision(runtime.precision, G, vgg, say=lambda s: log(f"project {mode}: {s}") if main
                                       else None)
            made["method"] = make_method(G, vgg, cfg, compile=compiled, precision=chosen, planned=lambda: steps * sum(
                not queue.is_done(u.id) for u in queue.units) // max(workers, 1),
                say=lambda s: log(f"project {mode}: {s}") if main else None)
        restored.extend(_restore_batch(mode, made["method"], work, batch, work_dir, progress))
        return _snapshot_remover(work, batch, work_dir)      # once the unit is marked done, not before
    restored: List[str] = []
    drive(queue, do, wait=wait, on_poll=progress.update)
    progress.close()
    if queue.all_done():                       # whoever sees the last unit done tidies up
        if replace:
            _remove_stale(work_dir, set(by_name))
        remove(work_dir / ".snapshots")        # every batch is done: what is left there is nobody's
        if work_dir != out_dir:
            mirror(work_dir, out_dir)
    return restored


def _snapshot_key(work: "_Work", batch: List[Target]) -> str:
    return hashlib.sha256("|".join(work.fingerprints[f.name] for f in batch).encode()).hexdigest()[:16]


def _snapshot_remover(work: "_Work", batch: List[Target], out_dir: Path):
    """What removes a batch's snapshot: called once its unit is marked done, so that a worker killed
    in between leaves the unit to be taken over with its snapshot (and its faces' receipts)."""
    return lambda: (out_dir / ".snapshots" / f"{_snapshot_key(work, batch)}.pt").unlink(missing_ok=True)


def check_precision(precision: str, device: str) -> None:
    """A precision mode this device cannot run is refused before any work, naming the key."""
    from recon.restore.precision import unavailable

    problem = unavailable(precision, device) if precision != "auto" else None
    if problem:
        raise ParamsError(f"{params_key('project.runtime.precision')}: {precision}: {problem} (this stage runs on "
                          f"{device})")


def _plan(queue: WorkQueue, key: str, targets: Targets, finished: set, runtime: Runtime, device: str, files,
          steps: int, workers: int):
    """Open the stage's plan: batches cut once from the fixed order of the faces, with the batch
    size recorded in the plan (or decided here when this worker makes it); units whose faces are
    no longer all done are reopened. Returns the models if deciding the batch size loaded them."""
    models = None
    faces = targets.faces
    batch_size = queue.recorded(key, "batch_size")
    if batch_size is None:
        if runtime.batch_size == "auto" and device.startswith("cuda"):
            models = load_models(files, device)     # to measure the batch that fits
        batch_size = resolve_batch(runtime, device, *(models or ()))
        if runtime.batch_size == "auto" and workers > 1:   # a batch for every worker, where the faces allow
            batch_size = max(1, min(batch_size, -(-len(faces) // workers)))

    def cut(meta: dict) -> List[Unit]:
        """The units of batches of ``meta["batch_size"]`` faces, in their fixed order; faces whose
        own ops differ (an observation of another size) in batches of their own."""
        size = meta.get("batch_size")
        if not isinstance(size, int) or size < 1:
            return []
        groups: Dict[str, List[Target]] = {}
        for face in faces:
            groups.setdefault(json.dumps(targets.ops_of(face), sort_keys=True), []).append(face)
        batches = [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]
        return [Unit(f"batch{k:05d}", float(len(b) * steps), dict(faces=[f.name for f in b]))
                for k, b in enumerate(batches)]
    units = cut(dict(batch_size=batch_size))
    done_units = [u.id for u in units if set(u.data["faces"]) <= finished]
    batch_size = queue.open(key, cut, dict(batch_size=batch_size), done=done_units)["batch_size"]
    queue.reopen([u.id for u in queue.units if not set(u.data["faces"]) <= finished])
    if not queue.all_done():
        check_batch(batch_size, runtime.batch_size)
    return models


def _read_starts(mode, cfg, faces, paths, G_config):
    """Every face's starting latent and the tuning it was found with (None: w_avg, untuned),
    refused (naming the file and the keys) if they cannot be used by the generator of
    ``G_config``; before any model is loaded."""
    cls = method_class(cfg)
    shapes = latent_shapes(G_config)
    latents: Dict[str, Optional[torch.Tensor]] = {}
    tunings: Dict[str, Optional[dict]] = {}
    for face in faces:
        path = paths[face.name]
        latents[face.name] = tunings[face.name] = None
        if path is not None:
            require_init(path, mode)
            latent = latents[face.name] = read_init(path, cls.init_keys, shapes, mode)
            problem = cls.start_problem(cfg, latent)
            if problem:
                raise ParamsError(f"{path}: {problem} ({params_key(f'project.{mode}.init')} and "
                                  f"project.{mode}.latent_space)")
            tunings[face.name] = read_tuning(path, mode, G_config)
    return latents, tunings


def finished_faces(mode: str, faces: List[Target], out_dir: Path, fingerprints: Dict[str, str], replace: bool,
                   say: bool = True, required: Optional[Dict[str, List[str]]] = None) -> set:
    """The faces whose receipt vouches for their result (``required``: per face, every file its
    result must have); a line for each one that runs again and why. A result made with other
    settings is refused unless ``replace``."""
    finished = set()
    reruns = []
    for face in faces:
        _, problem = check_receipt(out_dir / face.name, RECEIPT, fingerprints[face.name],
                                   (required or {}).get(face.name))
        if problem is None:
            finished.add(face.name)
        elif problem == OTHER_SETTINGS and not replace:
            raise ParamsError(f"{out_dir / face.name}: already holds a result made with other settings or inputs "
                              "(add --force to replace it)")
        elif problem != "missing":
            reruns.append((face.name, str(out_dir / face.name), problem))
    if say:
        say_reruns(f"project {mode}", reruns, log)
    return finished


def _remove_stale(out_dir: Path, names: set) -> None:
    """The results of faces that are no longer targets (a link is removed, not what it points to)."""
    for stale in out_dir.iterdir():
        if (stale.is_dir() or stale.is_symlink()) and not stale.name.startswith(".") and stale.name not in names:
            remove(stale)


def _prepare_face_dirs(out_dir: Path, batch: List[Target], start_step: int) -> None:
    """Before a batch runs: a fresh start clears each face's folder (what is there is stale); a
    resumed one keeps the progress images up to its snapshot and drops later ones (left by a
    longer run that was interrupted)."""
    for face in batch:
        folder = out_dir / face.name
        if start_step == 0:
            remove(folder)
            continue
        own_dir(own_dir(folder) / "progress")
        for img in (folder / "progress").glob("step*.png"):
            if not img.stem[4:].isdigit() or int(img.stem[4:]) > start_step:
                img.unlink()


def _restore_batch(mode, method, work: _Work, batch: List[Target], out_dir: Path, progress) -> List[str]:
    """Restore one batch whole; write the faces not already done (receipt last)."""
    names = [f.name for f in batch]
    todo = [f for f in batch if f.name not in work.finished]
    images = {f.name: work.image(f) for f in batch}
    d = degradation_for(work.targets, batch, work.degraded_dir, work.R)
    starts = [s for s in (work.starts[n] for n in names) if s is not None]
    init = stack_starts(starts, method.G.num_ws) if starts else None
    snap = own_dir(out_dir / ".snapshots") / f"{_snapshot_key(work, batch)}.pt"
    start_step = snapshot_step(snap)
    _prepare_face_dirs(out_dir, todo, start_step)

    def save_progress(step, imgs):
        for face, img in zip(batch, to_uint8(imgs)):
            if face.name not in work.finished:
                save_png(own_dir(own_dir(out_dir / face.name) / "progress") / f"step{step:05d}.png", img)

    results = method.restore(torch.cat([images[n] for n in names]), d, names=names,
                             rngs=[TorchRandom(method.cfg.seed) for _ in batch], init=init, snapshot_path=snap,
                             on_snapshot=save_progress, init_tuning=[work.tunings[n] for n in names],
                             on_step=progress.track(len(todo), method_class(method.cfg).total_steps(method.cfg),
                                                    start_step))
    for face, res in zip(batch, results):
        if face.name in work.finished:
            continue
        folder = own_dir(out_dir / face.name)
        for sub in ("samples", "progress"):
            if (folder / sub).is_symlink():
                (folder / sub).unlink()
        files = res.save(folder)
        save_png(folder / "target.png", to_uint8(images[face.name])[0])
        write_receipt(folder, RECEIPT, dict(fingerprint=work.fingerprints[face.name], mode=mode,
                                            config=method.cfg.model_dump(), precision=method.precision,
                                            target=asdict(face), **({"estimates": res.estimates}
                                                                    if res.estimates else {})),
                      files + ["target.png"])
        last = res.history[-1]
        found = "".join(f", {k} {v:.3g}" for k, v in res.estimates.items())
        progress.write(f"{face.name} done: distance {last['dist']:.4g}, loss {last['loss']:.4g}{found}")
    fault_point("after-receipts")
    return [f.name for f in todo]
