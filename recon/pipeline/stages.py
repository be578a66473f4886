"""What the DVC stages do, as functions (the scripts in ``stages/`` only read params and call these).

Layout on disk:
  data/aligned/<face>.png, manifest.json           (align)
  data/degraded/<mode>/<face>.png, <face>_mask.png, targets.json   (degrade@mode)
  data/projected/<mode>/<face>/image.png, degraded.png, latents.npz, loss.csv, done.json,
                              progress/stepNNNNN.png (one per snapshot)   (project@mode)
  data/synthetic/...                               (synthetic)
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from recon.config import MaskOp, ProjectorConfig, Runtime, Synthetic
from recon.restore.degrade import (Degradation, DegradationError, brush_mask, centre_mask, mask_from_color,
                      mask_from_file, parse_ops)
from .distributed import Group, Rank
from recon.errors import MissingInputError, ParamsError
from recon.data.imageio import PhotoError, from_uint8, load_photo, save_png, to_uint8, write_atomic, write_json
from .progress import StageProgress, slow_settings_warning
from recon.restore.official import Projector, TorchRandom, snapshot_step
from recon.restore.robust import RobustProjector, VGGLPIPS, restore_degraded
from recon.model.weights import WeightFiles, resolve_weights, sha256_of


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_device(device: str = "auto", key: str = "params.yaml: project.runtime.device") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device that this machine does not
    have is refused (:class:`ParamsError` naming ``project.runtime.device``)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ParamsError(f"{key}: must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            raise ParamsError(f"{key}: {device} is not available on this machine (no CUDA device; use auto or cpu)")
        if index >= torch.cuda.device_count():
            raise ParamsError(f"{key}: {device} is not available on this machine "
                              f"({torch.cuda.device_count()} CUDA devices)")
    return device


MAX_AUTO_BATCH = 16
MEMORY_HEADROOM = 0.8     # of the free device memory, the rest for the allocator and other tenants


def resolve_runtime(runtime: Runtime, device_key: str = "params.yaml: project.runtime.device", weights=None):
    """``(device, batch_size)`` for a run. ``batch_size: auto``: 1 on CPU (measured: a batch costs
    more per target there than one target at a time); on CUDA the largest batch whose measured
    step memory fits the free memory with headroom, capped at 16 (4 when ``weights`` are not
    given to measure with)."""
    device = resolve_device(runtime.device, key=device_key)
    batch = runtime.batch_size
    if batch == "auto":
        batch = 1
        if device.startswith("cuda"):
            batch = measured_batch_size(weights, device) if weights is not None else 4
    return device, batch


def batch_for_memory(per_target: int, fixed: int, free: int, cap: int = MAX_AUTO_BATCH,
                     headroom: float = MEMORY_HEADROOM) -> int:
    """The largest batch with ``fixed + batch * per_target <= headroom * free``, in [1, cap]."""
    room = headroom * free - fixed
    return int(max(1, min(cap, room // max(per_target, 1))))


def measured_batch_size(weights, device: str) -> int:
    """One projection step's peak memory at batch 1 and 2 on ``device`` (the run's generator and
    VGG, the official settings) gives the memory per target; see :func:`batch_for_memory`."""
    from recon.config import ProjectorConfig

    G, features = load_models(weights, device)
    R = G.img_resolution
    peaks = []
    for b in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        Projector(G, features, ProjectorConfig(num_steps=1, w_avg_samples=100, snapshot_every=0)).project(
            torch.zeros(b, 3, R, R, device=device), progress=False)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
    per_target = max(peaks[1] - peaks[0], 1)
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    batch = batch_for_memory(per_target, peaks[0] - per_target, free)
    log(f"batch_size auto: {per_target / 2**20:.0f} MiB per target, {free / 2**30:.1f} GiB free -> batch {batch}")
    del G, features
    torch.cuda.empty_cache()
    return batch


def check_resolution(params, generator_path, name: Optional[str] = None) -> None:
    """Refuse an ``align.resolution`` that differs from the generator's, as soon as the generator
    is known (download_weights, then align), not after align and degrade have run. ``name``: how
    to call the generator in the message (default: its path)."""
    from recon.model.checkpoint import read_config

    R = read_config(generator_path)["img_resolution"]
    if params.align.resolution != R:
        raise ParamsError(f"params.yaml: align.resolution: {params.align.resolution}, but the generator "
                          f"({name or generator_path}) makes {R}x{R} images; set align.resolution: {R}")


def weights_stage(params, out_dir) -> dict:
    """download_weights: obtain both networks (:func:`recon.weights.obtain`), convert the generator
    (the same checkpoint always gives the same bytes), check it against ``align.resolution``, put
    both in the per-user store by sha256 and write ``<out_dir>/weights.json`` (sources and
    digests: what the other stages depend on). Returns the record."""
    import tempfile

    from recon.model.checkpoint import convert
    from recon.errors import CheckpointError, DownloadError
    from recon.model.perceptual import load_vgg16
    from recon.model.weights import cache_dir, obtain, resolve_source, store

    files = {"generator": params.weights.generator, "vgg16": params.weights.vgg16}
    record, paths, failures = {}, {}, []
    for key, spec in files.items():     # every missing file is named in one run
        try:
            paths[key], digest = obtain(spec.source, spec.sha256, hint=f"weights.{key}.source")
        except DownloadError as exc:
            failures.append(str(exc))
            continue
        record[key] = dict(source=resolve_source(spec.source), sha256=digest, verified=bool(spec.sha256))
    if failures:
        raise DownloadError(f"{len(failures)} of {len(files)} weights files are missing:\n  " + "\n  ".join(failures))

    (cache_dir() / "weights").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir() / "weights") as tmp:
        converted = Path(tmp) / "generator.safetensors"
        try:
            convert(paths["generator"], converted)
            load_vgg16(paths["vgg16"])
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (a cached download that does not parse: delete it and rerun to fetch "
                                  "it again)") from None
        check_resolution(params, converted, record["generator"]["source"])
        record["generator"]["converted_sha256"] = sha256_of(converted)
        store(converted, record["generator"]["converted_sha256"], ".safetensors")
    store(paths["vgg16"], record["vgg16"]["sha256"], ".pt")
    write_json(Path(out_dir) / "weights.json", record)
    return record


def aligned_faces(aligned_dir) -> List[dict]:
    """The faces the align stage wrote, from its manifest: ``[{name, file, photo, quad, mask}]``."""
    aligned_dir = Path(aligned_dir)
    manifest_path = aligned_dir / "manifest.json"
    if not manifest_path.is_file():
        raise MissingInputError(f"{manifest_path}: missing (run the align stage first)")
    manifest = json.loads(manifest_path.read_text())
    faces = []
    for photo, entry in sorted(manifest["images"].items()):
        for f in entry["faces"]:
            faces.append(dict(name=Path(f["file"]).stem, file=str(aligned_dir / f["file"]), photo=photo,
                              quad=f["quad"], mask=str(aligned_dir / f["mask"]) if f.get("mask") else None))
    return faces


# ----------------------------------------------------------------------------------------------
# degrade@mode

def _mask_for(face: dict, op: MaskOp, rgb: np.ndarray, seed: int) -> torch.Tensor:
    size = rgb.shape[0]
    if op.source == "file":
        if not face["mask"]:
            raise MissingInputError(f"{face['photo']}: degrade's mask source is file, but the photo has no "
                                    f"<stem>_mask.png beside it (white = missing)")
        return mask_from_file(face["mask"], size)
    if op.source == "color":
        return mask_from_color(rgb, op.color, op.tolerance)
    if op.source == "brush":   # seeded per face, so every face has its own strokes, the same each run
        seed = (seed + int(hashlib.sha256(face["name"].encode()).hexdigest()[:8], 16)) % 2**32
        return (brush_mask(size, op.strokes, seed) > 0.5).float()
    return centre_mask(size, op.fraction)


def degrade_stage(mode: str, ops, faces: List[dict], out_dir, seed: int = 0, observed: bool = False) -> dict:
    """Write each face's degraded target as an 8-bit PNG (plus its mask) and targets.json.

    ``ops``: the mode's typed ops (``Params.ops(mode)``), or anything :func:`parse_ops` takes.
    ``faces``: :func:`aligned_faces` (or the same records for any square images).
    ``observed``: the photos are already degraded: each is its own target, as it is (the ops
    then only model, for the generated image, how the photo was degraded; masks are still made).
    A face that cannot be a target of this mode (unreadable, no mask file, no pixel of the mask
    colour) is skipped with a warning and listed under ``skipped`` in targets.json; a mode left
    with no target at all is an error."""
    from tqdm import tqdm

    ops = parse_ops(ops)
    mask_op = next((op for op in ops if isinstance(op, MaskOp)), None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, skipped = [], []
    for face in tqdm(faces, desc=f"degrade {mode}", unit="face"):
        try:
            rgb, _ = load_photo(face["file"])
            if rgb.shape[0] != rgb.shape[1]:
                raise PhotoError(f"{face['file']}: aligned faces must be square, got {rgb.shape[1]}x{rgb.shape[0]}")
            mask = _mask_for(face, mask_op, rgb, seed) if mask_op is not None else None
            d = Degradation(ops, rgb.shape[0], masks=mask, seed=seed)
        except (PhotoError, DegradationError, MissingInputError) as exc:
            reason = str(exc)
            log(f"degrade {mode}: warning: {face['name']} skipped: {reason}")
            skipped.append(dict(name=face["name"], photo=face["photo"], reason=reason))
            continue
        degraded = rgb if observed else to_uint8(d.target(from_uint8(rgb)))[0]
        save_png(out_dir / f"{face['name']}.png", degraded)
        rec = dict(name=face["name"], source=face["file"], photo=face["photo"], quad=face["quad"],
                   degraded=f"{face['name']}.png", mask=None, mask_source=mask_op.source if mask_op else None)
        if mask is not None:
            rec["mask"] = f"{face['name']}_mask.png"
            save_png(out_dir / rec["mask"], np.where(mask[0, 0].numpy() > 0.5, 0, 255).astype(np.uint8))
        records.append(rec)
    if not records:
        why = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped) or "no aligned faces"
        raise DegradationError(f"degrade.{mode}: no face can be a target of this mode ({why})")
    targets = dict(mode=mode, ops=[op.model_dump() for op in ops], seed=seed, observed=observed, faces=records,
                   skipped=skipped)
    write_json(out_dir / "targets.json", targets)
    return targets


def load_targets(degraded_dir) -> dict:
    path = Path(degraded_dir) / "targets.json"
    if not path.is_file():
        raise MissingInputError(f"{path}: missing (run the degrade stage first)")
    return json.loads(path.read_text())


def degradation_for(targets: dict, faces: List[dict], degraded_dir, size: int) -> Degradation:
    masks = None
    if any(op["type"] == "mask" for op in targets["ops"]):  # targets.json holds the ops as plain dicts
        masks = torch.cat([mask_from_file(Path(degraded_dir) / f["mask"], size) for f in faces])
    return Degradation(targets["ops"], size, masks=masks, seed=int(targets.get("seed", 0)))


# ----------------------------------------------------------------------------------------------
# project@mode

def load_models(weights, device):
    """The generator and the VGG16 feature function of ``weights`` (a download_weights folder, a
    ``(generator, vgg16)`` pair, or resolved :class:`recon.weights.WeightFiles`)."""
    from recon.model.checkpoint import load_generator
    from recon.model.perceptual import VGGFeatures, load_vgg16

    files = weights if isinstance(weights, WeightFiles) else resolve_weights(weights)
    return load_generator(files.generator, device=device), VGGFeatures(load_vgg16(files.vgg16, device))


# ----------------------------------------------------------------------------------------------
# Starting latents (project.<mode>.init)

MAX_INIT_BYTES = 256 << 20


def init_path(cfg: ProjectorConfig, face_name: str, out_dir) -> Optional[Path]:
    """Where a face's starting latent is read from (None: ``w_avg``)."""
    if cfg.init == "w_avg":
        return None
    if cfg.init_mode:
        return Path(out_dir).parent / cfg.init_mode / face_name / "latents.npz"
    return Path(cfg.init)


def require_init(path: Path, mode: str = "<mode>") -> None:
    """Refuse a starting latent that is not there, naming the file, the stage to run and the key."""
    if not path.is_file():
        hint = (f" (run `dvc repro project@{path.parent.parent.name}` first)" if path.name == "latents.npz"
                and path.parent.parent.parent.name == "projected" else "")
        raise MissingInputError(f"{path}: starting latents not found{hint} (params.yaml: project.{mode}.init)")


MAX_LATENT_ABS = 1e3      # a StyleGAN2 w stays within about +-20; larger is not a latent of this model


def _npz_member_header(z, member: str):
    """``(shape, fortran_order, dtype)`` from an ``.npy`` member's header, read before its data
    (a header may declare any size; nothing is allocated from it unchecked)."""
    with z.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy version {version}")


def read_init(path: Path, method: str, shapes: dict, mode: str = "<mode>", latent_space: str = "w+") -> torch.Tensor:
    """One target's starting latent from a ``latents.npz``: W ``[w_dim]``, W+ ``[num_ws, w_dim]``
    or (robust method) W++ ``[num_ws, K, w_dim]``, the most detailed the file holds that the
    method can start from; ``shapes``: :func:`recon.networks.latent_shapes` of the generator. A W+
    whose rows are all equal is a W. Refused, naming the file and ``project.<mode>.init``: a file
    that is not a readable npz, arrays that are not float arrays of exactly the generator's shape
    (checked from each header before any data is read), values that are not finite or beyond
    +-:data:`MAX_LATENT_ABS`, and a W+ with differing rows for a run that starts in W."""
    import zipfile

    key = f"params.yaml: project.{mode}.init"
    require_init(path, mode)
    order = ("wpp", "wp", "ws", "w") if method == "robust" else ("wp", "ws", "w")
    want = dict(shapes, ws=shapes["wp"])
    try:
        with zipfile.ZipFile(path) as z:
            if sum(i.file_size for i in z.infolist()) > MAX_INIT_BYTES:
                raise ParamsError(f"{path}: more than {MAX_INIT_BYTES >> 20} MB of arrays; not a latents file ({key})")
            members = {m[:-4]: m for m in z.namelist() if m.endswith(".npy")}
            name = next((k for k in order if k in members), None)
            if name is None:
                raise ParamsError(f"{path}: holds none of {', '.join(order)} ({key})")
            shape, fortran, dtype = _npz_member_header(z, members[name])
            if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8) or list(shape) != want[name]:
                raise ParamsError(f"{path}: {name} must be a float array of shape {want[name]} for this generator, "
                                  f"got {dtype} {list(shape)} ({key})")
            with z.open(members[name]) as f:
                x = np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ParamsError(f"{path}: not a readable latents.npz ({type(exc).__name__}: {exc}) ({key})") from None
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not torch.isfinite(x).all() or float(x.abs().max()) > MAX_LATENT_ABS:
        raise ParamsError(f"{path}: {name} must be finite and within +-{MAX_LATENT_ABS:g}, got values up to "
                          f"{float(x.abs().max()):.3g} ({key})")
    if x.ndim == 2 and torch.equal(x, x[:1].expand_as(x)):
        x = x[0]
    if x.ndim == 2 and method != "robust" and latent_space != "w+":
        raise ParamsError(f"{path}: holds a W+ latent (one w per layer, rows differ), but project.{mode}.latent_space "
                          f"is {latent_space}, which starts from one w ({key}; use latent_space: w+)")
    return x


def stack_inits(inits: List[torch.Tensor], num_ws: int) -> torch.Tensor:
    """One batch of starting latents: W ones broadcast to W+ when the batch mixes the two."""
    if len({t.ndim for t in inits}) > 1:
        inits = [t[None].repeat(num_ws, 1) if t.ndim == 1 else t for t in inits]
    return torch.stack(inits)


def _face_fingerprint(cfg: ProjectorConfig, targets: dict, face: dict, degraded_dir, weights_digest: str,
                      init: Optional[Path] = None) -> str:
    h = hashlib.sha256()
    if init is not None and init.is_file():
        h.update(sha256_of(init).encode())
    h.update(cfg.fingerprint().encode())
    h.update(weights_digest.encode())
    h.update(json.dumps(targets["ops"], sort_keys=True).encode())
    h.update(sha256_of(Path(degraded_dir) / face["degraded"]).encode())
    if face.get("mask"):
        h.update(sha256_of(Path(degraded_dir) / face["mask"]).encode())
    return h.hexdigest()[:24]


def project_stage(mode: str, cfg: ProjectorConfig, degraded_dir, out_dir, weights="weights",
                  batch_size: int = 4, device: str = "auto", replace: bool = True,
                  group: Optional[Group] = None, compile: str = "off") -> List[str]:
    """Project every degraded target of a mode, in batches; resumable. The pipeline's stage and
    ``recon project`` both run this.

    ``weights``: the download_weights folder, or a ``(generator, vgg16)`` pair of paths.
    ``compile``: auto | on | off (:mod:`recon.compiled`; the official method's step).
    Finished faces carry ``done.json`` with a fingerprint of everything that produced them and are
    skipped on rerun; an interrupted batch resumes from its snapshot. With ``replace`` (the
    pipeline, which owns its output folder) results made with other settings are recomputed and
    those of faces that are no longer targets removed; without it (the command line) a result
    made with other settings is refused and other folders are left alone.

    Batches are cut from the list of all targets, so a face is always optimized with the same
    companions (and gives the same bits) however many workers share the work; with a ``group``
    each rank takes every world-th pending batch, and all ranks meet at a barrier at the end.
    Returns the names projected by this process.
    """
    from recon.model.checkpoint import read_config

    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ParamsError(f"params.yaml: project.runtime.batch_size: must be an integer >= 1, got {batch_size!r}")
    rank = group.rank if group is not None else Rank()
    device = group.device if group is not None else resolve_device(device)
    targets = load_targets(degraded_dir)
    degraded_dir, out_dir = Path(degraded_dir), Path(out_dir)
    # Everything is checked before the models are loaded.
    files = resolve_weights(weights)
    R = read_config(files.generator)["img_resolution"]
    faces = targets["faces"]
    names = {f["name"] for f in faces}

    weights_digest = files.digest
    fingerprints, finished = {}, set()
    for face in faces:
        fp = fingerprints[face["name"]] = _face_fingerprint(cfg, targets, face, degraded_dir, weights_digest,
                                                            init_path(cfg, face["name"], out_dir))
        done = out_dir / face["name"] / "done.json"
        if done.is_file():
            if json.loads(done.read_text()).get("fingerprint") == fp:
                finished.add(face["name"])
            elif not replace:
                raise ParamsError(f"{done.parent}: already holds a result made with other settings or inputs "
                                  "(add --force to replace it)")

    batches = [faces[i:i + batch_size] for i in range(0, len(faces), batch_size)]
    pending = [b for b in ([f for f in batch if f["name"] not in finished] for batch in batches) if b]
    mine = rank.share(pending)
    todo = sum(len(b) for b in pending)
    images = {}
    for face in (f for batch in mine for f in batch):
        rgb, _ = load_photo(degraded_dir / face["degraded"])
        if rgb.shape[:2] != (R, R):
            raise PhotoError(f"{degraded_dir / face['degraded']}: target is {rgb.shape[1]}x{rgb.shape[0]}, the "
                             f"generator makes {R}x{R} "
                             f"(align faces at {R} px: align.resolution in params.yaml, --size of recon align)")
        images[face["name"]] = from_uint8(rgb)
        start = init_path(cfg, face["name"], out_dir)
        if start is not None:
            require_init(start, mode)
    if rank.is_main and todo < len(faces):
        log(f"project {mode}: {len(faces) - todo} of {len(faces)} faces already done")
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank.is_main:
        for stale in out_dir.iterdir() if replace else ():
            if stale.is_dir() and not stale.name.startswith(".") and stale.name not in names:
                shutil.rmtree(stale)
    snap_dir = out_dir / ".snapshots"
    snap_dir.mkdir(exist_ok=True)
    if group is not None:
        group.barrier()   # every rank has read what is done before any rank writes a result

    done_names = []
    if mine:
        G, features = load_models(files, device)
        from recon.restore.compiled import resolve_compile
        compiled = cfg.method != "robust" and resolve_compile(compile, device, cfg.num_steps, G.img_resolution)
        projector = (RobustProjector(G, VGGLPIPS(features.vgg), cfg.robust) if cfg.method == "robust"
                     else Projector(G, features, cfg, compile=compiled))
        steps = sum(cfg.robust.steps) if cfg.method == "robust" else cfg.num_steps
        if compiled and rank.is_main:
            log(f"project {mode}: compiling the projection step (project.runtime.compile: {compile}); "
                "the first step waits for it, minutes the first time")
        warning = slow_settings_warning(device, R, todo, steps)
        if warning and rank.is_main:
            log(f"project {mode}: warning: {warning}")
        pending_names = [f["name"] for batch in pending for f in batch]
        count_done = ((lambda: len(faces) - todo + sum((out_dir / n / "done.json").is_file() for n in pending_names))
                      if rank.world > 1 else None)
        progress = StageProgress(f"project {mode}", len(faces), len(faces) - todo, steps,
                                 enabled=rank.is_main, count_done=count_done, workers=rank.world)
        for batch in mine:
            done_names += _project_batch(mode, projector, cfg, targets, batch, images, fingerprints, degraded_dir,
                                         out_dir, snap_dir, R, progress)
        progress.close()
    if group is not None:
        group.barrier()   # rank 0 writes the summary once every rank is done
    if rank.is_main and snap_dir.is_dir() and not any(snap_dir.iterdir()):
        snap_dir.rmdir()
    return done_names


def _batch_inits(cfg, mode, batch, out_dir, G) -> Optional[torch.Tensor]:
    paths = [init_path(cfg, f["name"], out_dir) for f in batch]
    if paths[0] is None:
        return None
    return stack_inits([read_init(p, cfg.method, G, mode) for p in paths], G.num_ws)


def _mark_done(mode, cfg, face, images, fingerprints, out_dir) -> None:
    """A finished face: its target beside the result, and done.json last (what reruns check)."""
    save_png(out_dir / face["name"] / "target.png", to_uint8(images[face["name"]])[0])
    write_json(out_dir / face["name"] / "done.json", dict(fingerprint=fingerprints[face["name"]], mode=mode,
                                                         config=cfg.model_dump(), target=face))


def _project_batch(mode, projector, cfg, targets, batch, images, fingerprints, degraded_dir, out_dir, snap_dir, R,
                   progress) -> List[str]:
    d = degradation_for(targets, batch, degraded_dir, R)
    init = _batch_inits(cfg, mode, batch, out_dir, projector.G)
    key = hashlib.sha256("|".join(fingerprints[f["name"]] for f in batch).encode()).hexdigest()[:16]
    snap = snap_dir / f"{key}.pt"
    if cfg.method == "robust":
        return _restore_batch_robust(mode, projector, cfg, batch, images, fingerprints, d, out_dir, progress,
                                     init, snap)
    if init is not None and init.ndim == 2:
        init = init[:, None]

    def save_progress(step, imgs):
        for face, img in zip(batch, to_uint8(imgs)):
            save_png(out_dir / face["name"] / "progress" / f"step{step:05d}.png", img)

    results = projector.project(torch.cat([images[f["name"]] for f in batch]), degradation=d,
                                names=[f["name"] for f in batch], rngs=[TorchRandom(cfg.seed) for _ in batch],
                                snapshot_path=snap, on_snapshot=save_progress, progress=False,
                                on_step=progress.batch(len(batch), snapshot_step(snap)), init_ws=init)
    for face, res in zip(batch, results):
        res.save(out_dir / face["name"])
        _mark_done(mode, cfg, face, images, fingerprints, out_dir)
        progress.face_done(face["name"], res.history)
    progress.batch_done()
    snap.unlink(missing_ok=True)
    return [f["name"] for f in batch]


def _restore_batch_robust(mode, projector, cfg, batch, images, fingerprints, d, out_dir, progress, init=None,
                          snap=None) -> List[str]:
    """The robust method on one batch: the loss compares the degraded generated image with the
    degraded target, both in [0, 1] (the pipeline's degradations work in [-1, 1]). Masked pixels
    take the degradation's fixed fill in both images, and the loss adds the same fresh noise to
    both in the holes at every scale and step (each target's own draws). Snapshots every
    ``snapshot_every`` steps; an interrupted batch resumes from its snapshot."""
    results = restore_degraded(projector, torch.cat([images[f["name"]] for f in batch]), d,
                               on_step=progress.batch(len(batch), snapshot_step(snap)),
                               rngs=[TorchRandom(cfg.seed) for _ in batch], names=[f["name"] for f in batch],
                               init=init, snapshot_path=snap, snapshot_every=cfg.snapshot_every)
    with torch.no_grad():
        degraded = d(torch.stack([r.images["W++"] for r in results]).to(projector.device) * 2 - 1).cpu()
    for face, res, deg in zip(batch, results, degraded):
        res.save(out_dir / face["name"], deg)
        _mark_done(mode, cfg, face, images, fingerprints, out_dir)
        progress.face_done(face["name"], [dict(h, dist=h["loss"]) for h in res.history])
    progress.batch_done()
    if snap is not None:
        snap.unlink(missing_ok=True)
    return [f["name"] for f in batch]


# ----------------------------------------------------------------------------------------------
# synthetic: invert generated images over a grid of num_steps x latent_dist_reg_weight

def synthetic_stage(params: Synthetic, base_cfg: ProjectorConfig, out_dir, weights="weights",
                    device: str = "auto", group: Optional[Group] = None) -> dict:
    """Sample one image per seed, then invert all of them for every (num_steps, reg weight) cell
    of the grid; the output folder is made anew. With a ``group`` each rank takes every
    world-th cell and rank 0 writes ``runs.json`` once all are done."""
    rank = group.rank if group is not None else Rank()
    device = group.device if group is not None else resolve_device(device)
    out_dir = Path(out_dir)
    if rank.is_main:
        shutil.rmtree(out_dir, ignore_errors=True)
    if group is not None:
        group.barrier()
    G, features = load_models(weights, device)
    seeds, psi = list(params.seeds), params.truncation_psi
    z = torch.cat([torch.from_numpy(np.random.RandomState(s).randn(1, G.z_dim)) for s in seeds]).to(device)
    with torch.no_grad():
        truth = G.synthesis(G.mapping(z, None, truncation_psi=psi), noise_mode="const")
    truth_u8 = to_uint8(truth)
    if rank.is_main:
        for s, img in zip(seeds, truth_u8):
            save_png(out_dir / "truth" / f"seed{s:04d}.png", img)
    targets = from_uint8(truth_u8).to(device)
    grid = [(steps, reg) for steps in params.num_steps for reg in params.latent_dist_reg_weight]
    warning = slow_settings_warning(device, G.img_resolution, len(seeds) * len(grid), max(params.num_steps))
    if warning and rank.is_main:
        log(f"synthetic: warning: {warning}")
    names = [f"seed{s:04d}" for s in seeds]
    tags = {cell: f"steps{int(cell[0])}_reg{float(cell[1]):g}" for cell in grid}
    for k, (steps, reg) in enumerate(grid, 1):
        if (k - 1) % rank.world != rank.rank:
            continue
        cfg = base_cfg.model_copy(update=dict(num_steps=steps, latent_dist_reg_weight=reg))
        label = f"synthetic run {k}/{len(grid)} (steps {steps}, reg {reg:g})"
        results = Projector(G, features, cfg).project(targets, names=names, rngs=[TorchRandom(cfg.seed) for _ in seeds],
                                                      desc=rank.label(label))
        for res in results:
            res.save(out_dir / tags[steps, reg] / res.name)
        log(f"{rank.label(label)} done: mean distance {np.mean([r.history[-1]['dist'] for r in results]):.4g}")
    runs = {tags[steps, reg]: dict(num_steps=int(steps), latent_dist_reg_weight=float(reg), faces=names)
            for steps, reg in grid}
    if group is not None:
        group.barrier()
    if rank.is_main:
        write_json(out_dir / "runs.json", dict(seeds=seeds, truncation_psi=psi, runs=runs))
    return runs


def write_loss_table(out_dir, csv_path) -> Path:
    """Every ``loss.csv`` below ``out_dir`` in one long table ``step,face,dist,noise_reg,latent_reg,loss``
    (``face`` is the folder path below ``out_dir``): the data of one DVC plot with a line per face."""
    out_dir, csv_path = Path(out_dir), Path(csv_path)
    rows = []
    for path in sorted(out_dir.rglob("loss.csv")):
        face = path.parent.relative_to(out_dir).as_posix()
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                rows.append(dict(step=r["step"], face=face, dist=r["dist"], noise_reg=r["noise_reg"],
                                 latent_reg=r["latent_reg"], loss=r["loss"]))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "face", "dist", "noise_reg", "latent_reg", "loss"])
            w.writeheader()
            w.writerows(rows)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(csv_path, write)
    return csv_path
