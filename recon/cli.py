"""The ``recon`` command: ``convert``, ``info``, ``align``, ``project`` (the pipeline's steps, for direct use),
``work`` (one more worker of a stage), ``doctor`` (what this machine gives recon) and ``verify`` (this install
against the repository's fixtures)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .runner import run


def _cmd_convert(args) -> int:
    from .model.checkpoint import convert

    out = convert(args.src, args.dst, overwrite=args.force)
    print(f"wrote {out}")
    return 0


def _cmd_info(args) -> int:
    from .errors import CheckpointError
    from .model.checkpoint import load_generator

    kind = sniff(Path(args.path))
    if kind is not None:
        raise CheckpointError(f"{args.path}: {kind}, not a generator checkpoint (recon info reads an official .pkl "
                              "or recon's .safetensors)")
    G = load_generator(args.path)
    info = dict(G.config, num_ws=G.num_ws, num_params=sum(p.numel() for p in G.parameters()))
    print(json.dumps(info, indent=2))
    return 0


def sniff(path: Path):
    """What a file is when it is plainly not a generator checkpoint (from its first bytes), or None."""
    import zipfile

    if not path.is_file():
        return "no such file" if not path.exists() else "a folder"
    with open(path, "rb") as f:
        head = f.read(16)
    images = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
              b"BM": "a BMP image", b"RIFF": "a RIFF file (WebP or audio)"}
    for magic, what in images.items():
        if head.startswith(magic):
            return what
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "a damaged zip file"
        if names and all(n.endswith(".npy") for n in names):
            keys = ", ".join(n[:-4] for n in names[:6]) + (", ..." if len(names) > 6 else "")
            return f"a numpy archive (.npz) of {len(names)} arrays ({keys}): latents.npz holds a face's latents"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "a TorchScript module (NVIDIA's vgg16.pt is one)"
        return "a zip archive (a torch.save file or other)"
    if head[:1] in (b"{", b"["):
        return "a JSON file"
    return None


def _cmd_align(args) -> int:
    from .config import Align, validated
    from .data.align import align_paths

    opts = validated(Align, dict(resolution=args.size, detector=args.detector, upsample=args.upsample,
                                 min_score=args.min_score, largest_only=args.largest, max_faces=args.max_faces),
                     "command line")
    manifest = align_paths(args.inputs, args.out, opts, overwrite=args.force)
    n = sum(len(e["faces"]) for e in manifest["images"].values())
    print(f"aligned {n} faces from {len(manifest['images'])} photos into {args.out}")
    return 0


def _settings(args, default_method: str = "official"):
    """``(params, ops, cfg, runtime, device, observed)`` for ``recon project`` and ``recon restore``:
    ``--degrade`` a mode of ``--params`` or a degradation type with its defaults, the projector's
    settings with the command line's overrides."""
    from .config import OP_TYPES, Params, Runtime, load_params, validated
    from .errors import ParamsError
    from .pipeline.runtime import resolve_device
    from .restore.degrade import parse_ops

    params = load_params(args.params) if args.params else Params()
    if args.degrade in params.degrade:
        ops, cfg = params.ops(args.degrade), params.project.for_mode(args.degrade)
        observed = params.observed(args.degrade)
    elif args.degrade in OP_TYPES:
        ops, cfg, observed = parse_ops(args.degrade), params.project.default, None
    else:
        raise ParamsError(f"--degrade: {args.degrade!r} is neither a degradation type ({', '.join(OP_TYPES)}) "
                          f"nor a mode of {args.params or 'the params'} ({', '.join(params.degrade) or 'none'})")
    overrides = dict(num_steps=args.steps, latent_space=getattr(args, "space", None),
                     latent_dist_reg_weight=getattr(args, "latent_reg", None), seed=args.seed,
                     method=getattr(args, "method", None))
    if args.degrade not in params.degrade and overrides["method"] is None and default_method != cfg.method:
        overrides["method"] = default_method
    cfg = validated(type(cfg), {**cfg.model_dump(), **{k: v for k, v in overrides.items() if v is not None}},
                    "command line")
    runtime = params.project.runtime
    runtime = validated(Runtime, dict(runtime.model_dump(), device=args.device or runtime.device,
                                      batch_size=args.batch if args.batch is not None else runtime.batch_size,
                                      precision=args.precision or runtime.precision),
                        "command line")
    return params, ops, cfg, runtime, resolve_device(runtime.device, key="--device"), observed


def _cmd_project(args) -> int:
    """The pipeline's own degrade and project functions, on a folder of aligned faces."""
    from .data.imageio import list_photos
    from .errors import ParamsError
    from .pipeline.degrade import degrade_stage
    from .pipeline.project import project_stage
    from .pipeline.records import Face

    params, ops, cfg, runtime, device, observed = _settings(args)
    paths = list_photos(args.targets)
    check_aligned(paths, args.generator)
    faces = [Face(name=p.stem, file=str(p), photo=p.name) for p in paths]
    if len({f.name for f in faces}) != len(faces):
        raise ParamsError("targets: two images have the same name; results are written per name")
    out = Path(args.out)
    degrade_stage(args.degrade, ops, faces, out / ".targets", seed=params.seeds.degrade, observed=bool(observed))
    done = project_stage(args.degrade, cfg, out / ".targets", out, (args.generator, args.vgg), runtime, device,
                         replace=args.force)
    print(f"projected {len(done)} of {len(faces)} images into {out}"
          + (f" ({len(faces) - len(done)} already done with these settings)" if len(done) < len(faces) else ""))
    return 0


def _cmd_restore(args) -> int:
    """A one-off: photos as they are (already degraded), aligned, restored and pasted back."""
    from .config import Align
    from .data.align import align_paths
    from .data.imageio import list_photos
    from .errors import ParamsError
    from .model.checkpoint import read_config
    from .model.weights import resolve_weights
    from .pipeline.degrade import degrade_stage
    from .pipeline.project import project_stage
    from .pipeline.records import aligned_faces
    from .pipeline.results import results_stage

    weights = (args.generator, args.vgg) if args.generator or args.vgg else args.weights
    if isinstance(weights, tuple) and not all(weights):
        raise ParamsError("--generator and --vgg: give both (or neither, to use the --weights folder)")
    files = resolve_weights(weights)
    params, ops, cfg, runtime, device, _ = _settings(args, default_method="robust")
    photos = list_photos(args.photos)
    names = [p.name for p in photos]
    if len(set(names)) != len(names):
        raise ParamsError("photos: two photos have the same file name; results are written per name")
    out = Path(args.out)
    work = out / ".recon"
    R = read_config(files.generator)["img_resolution"]
    align_paths(photos, work / "aligned", Align(resolution=R), overwrite=True)
    mode = args.degrade
    degrade_stage(mode, ops, aligned_faces(work / "aligned"), work / "degraded" / mode, seed=params.seeds.degrade,
                  observed=True)
    project_stage(mode, cfg, work / "degraded" / mode, work / "projected" / mode, weights, runtime, device,
                  replace=True)
    index = results_stage([mode], work, None, out, photos={p.name: p for p in photos}, flat=True)
    print(f"restored {len(index[mode]['faces'])} faces of {len(photos)} photos into {out} "
          f"({', '.join(index[mode]['photos'])}; the faces in {out / 'faces'})")
    return 0


def check_aligned(paths, generator) -> None:
    """Every image given to ``recon project`` is an aligned face of the generator's size (refused,
    naming the user's file, before any work)."""
    from .data.imageio import PhotoError, load_photo
    from .model.checkpoint import read_config

    R = read_config(generator)["img_resolution"]
    for p in paths:
        rgb, _ = load_photo(p)
        if rgb.shape[:2] != (R, R):
            raise PhotoError(f"{p}: {rgb.shape[1]}x{rgb.shape[0]}, not an aligned face of the generator's {R}x{R} "
                             f"(align photos first: recon align PHOTO --out DIR --size {R}; or recon restore PHOTO)")


def _cmd_work(args) -> int:
    """One more worker of a DVC stage whose work is shared (project@<mode>, synthetic, benchmark):
    the stage's own command, as dvc.yaml gives it, run in the project folder with this process's
    environment, from wherever it is started (a Ray or Dask task starts in its own directory)."""
    import os
    import shlex
    import subprocess

    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from .errors import ParamsError

    root = Path(args.repo).resolve()
    if not (root / "dvc.yaml").is_file():
        raise ParamsError(f"--repo {root}: no dvc.yaml there (the project folder that holds the stage)")
    here = os.getcwd()
    os.chdir(root)                  # DVC resolves a stage's name against the working directory
    try:
        with Repo(str(root)) as repo:
            (stage,) = repo.stage.collect(args.stage)
    except (DvcException, ValueError) as exc:
        raise ParamsError(f"{args.stage}: not a stage of {root}/dvc.yaml ({exc})") from None
    finally:
        os.chdir(here)
    cmd = shlex.split(stage.cmd)
    if cmd[0] == "python":
        cmd[0] = sys.executable
    if not args.wait:
        cmd.append("--no-wait")
    return subprocess.run(cmd, cwd=root).returncode


def _cmd_doctor(args) -> int:
    """What this machine gives recon: versions, devices, the CUDA ops' state, one step's time."""
    import platform
    import time

    import torch

    from .bench import projection_run, random_generator, sync, vgg_module
    from .config import ProjectorConfig
    from .model import load_models
    from .model.ops import _plugin
    from .model.weights import RECORD, resolve_weights
    from .pipeline.runtime import resolve_device
    from .restore import make_method

    device = resolve_device(args.device, key="--device")
    print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}"
          + (f", cuDNN {torch.backends.cudnn.version()}" if torch.cuda.is_available() else ""))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
    else:
        print(f"no CUDA device; CPU with {torch.get_num_threads()} threads")
    print(f"device: {device}")

    weights = Path(args.weights)
    if (weights / RECORD).is_file():
        G, vgg = load_models(resolve_weights(weights), device)
        what = f"the weights of {weights / RECORD} ({G.img_resolution} px generator)"
    else:
        G = random_generator(args.resolution, 32768 if device.startswith("cuda") else 8192, 512, torch.device(device))
        vgg, vgg_name = vgg_module("", torch.device(device))
        what = f"a random {args.resolution} px generator and {vgg_name} (no weights in {weights})"

    if device.startswith("cuda"):
        _plugin.for_op("bias_act", torch.device(device))      # builds the extension and runs its self-check
    st = _plugin.status()
    if not device.startswith("cuda"):
        st["state"] = "not used on CPU (the pure-PyTorch reference ops run)"
    print(f"CUDA ops: {st['state']}" + (f" ({st['error']})" if st["error"] else ""))
    for dev, verdict in st["verdicts"].items():
        for op, v in verdict.items():
            state = "verified" if v["ok"] else "FAILED, using the reference"
            print(f"  {op} on {dev}: {state} (max relative error {v['error']:.2g} in {v['dtype']})"
                  + (f": {v['detail']}" if v.get("detail") else ""))

    R = G.img_resolution
    method = make_method(G, vgg, ProjectorConfig(w_avg_samples=1000, snapshot_every=0))
    go = projection_run(method, torch.zeros(1, 3, R, R, device=device))
    go(2)                                                     # warm-up
    sync(torch.device(device))
    t0 = time.perf_counter()
    go(args.steps)
    sync(torch.device(device))
    per_step = (time.perf_counter() - t0) / args.steps
    print(f"one projection step (batch 1, official settings, uncompiled) with {what}: {per_step * 1000:.1f} ms")
    if args.gate:
        from .pipeline.gate import cached_gate, verdict_table
        print(verdict_table(cached_gate(G, vgg, say=print)))
    return 0


def _cmd_verify(args) -> int:
    """Check this install against the repository's fixtures; a report with every check's verdict."""
    import os

    from .verify import run_verify

    return run_verify(args.device, args.out, quick=args.quick, fixtures=args.fixtures,
                      official_src=args.official_src or os.environ.get("RECON_OFFICIAL_SRC", ""),
                      weights=args.weights)


def _number(kind, minimum, what: str):
    """An argparse type: a finite ``kind`` (int or float) of at least ``minimum``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or value in (float("inf"), float("-inf")) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


positive_int = _number(int, 1, "an integer >= 1")
non_negative_int = _number(int, 0, "an integer >= 0")
non_negative_float = _number(float, 0.0, "a finite number >= 0")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import OP_TYPES

    parser = argparse.ArgumentParser(prog="recon", description="Face restoration by StyleGAN2 inversion.")
    parser.add_argument("--version", action="version", version=f"recon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an official .pkl to the project's .safetensors format "
                                       "(the pickle is read safely: nothing in it is executed)")
    p.add_argument("src", help="official stylegan2-ada-pytorch / stylegan3 network pickle (.pkl)")
    p.add_argument("dst", help="output .safetensors path")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("align", help="FFHQ-align every face in photos (files or folders)")
    p.add_argument("inputs", nargs="+", metavar="PHOTO_OR_DIR")
    p.add_argument("--out", required=True, help="output folder for <stem>_<k>.png and manifest.json")
    p.add_argument("--size", type=int, default=1024, help="output size in pixels (default 1024)")
    p.add_argument("--detector", choices=("hog", "cnn"), default="hog",
                   help="dlib HOG (fast, frontal) or CNN (slow, finds profiles)")
    p.add_argument("--upsample", type=int, default=1, help="detector upsampling (finds smaller faces)")
    p.add_argument("--min-score", type=float, default=0.5, help="minimum detection score (HOG false "
                   "positives score ~0.1, real faces >= 0.6)")
    p.add_argument("--largest", action="store_true", help="keep only the largest face of each photo")
    p.add_argument("--max-faces", type=int, default=0, help="keep at most N faces per photo (0 = all)")
    p.add_argument("--force", action="store_true", help="write into a folder that holds an earlier alignment")
    p.set_defaults(func=_cmd_align)

    p = sub.add_parser("project", help="project aligned faces into a generator, degraded first as the pipeline "
                                       "does; the same functions and defaults as the pipeline's project stage")
    p.add_argument("targets", nargs="+", metavar="IMAGE_OR_DIR", help="aligned faces at the generator's size")
    p.add_argument("--generator", required=True, help=".pkl or .safetensors")
    p.add_argument("--vgg", required=True, help="NVIDIA's vgg16.pt")
    p.add_argument("--out", required=True, help="results: <out>/<name>/image.png, latents.npz, loss.csv, ...")
    p.add_argument("--params", help="a params.yaml to take the projector settings and modes from (default: "
                                    "the pipeline's defaults)")
    p.add_argument("--degrade", default="none",
                   help="a mode of --params, or a degradation type with its defaults: "
                        f"{', '.join(OP_TYPES)} (default none)")
    p.add_argument("--steps", type=positive_int, help="num_steps (default 1000)")
    p.add_argument("--space", choices=("w", "w+", "w->w+"), help="latent_space (default w)")
    p.add_argument("--latent-reg", type=non_negative_float, help="latent_dist_reg_weight (default 0.001)")
    p.add_argument("--batch", type=positive_int, help="targets per forward pass (default: the params' "
                   "project.runtime.batch_size; auto = as many as fit the free memory on CUDA, at most 16; 1 on CPU)")
    p.add_argument("--seed", type=non_negative_int, help="random seed (default 303)")
    p.add_argument("--precision", choices=("auto", "fp32", "tf32", "bf16"),
                   help="the step's arithmetic (default: the params' project.runtime.precision, fp32)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--force", action="store_true",
                   help="replace results in --out that were made with other settings")
    p.set_defaults(func=_cmd_project)

    p = sub.add_parser("restore", help="restore photos as they are (already degraded): align every face, restore "
                                       "it, paste it back; writes OUT/<photo>.png and OUT/faces/<face>.png")
    p.add_argument("photos", nargs="+", metavar="PHOTO_OR_DIR")
    p.add_argument("--out", required=True, help="where the restored photos go")
    p.add_argument("--degrade", default="auto", help="how the photos were degraded: auto (nothing known: grayscale "
                   "detected, the face's own resolution, the blur estimated), a degradation type, or a mode of "
                   "--params (default auto)")
    p.add_argument("--method", choices=("official", "robust"), help="default robust (fixed noise maps)")
    p.add_argument("--steps", type=positive_int, help="num_steps (default: the params', 1000)")
    p.add_argument("--weights", default="weights", help="a download_weights folder (default weights)")
    p.add_argument("--generator", help=".pkl or .safetensors (instead of --weights, with --vgg)")
    p.add_argument("--vgg", help="NVIDIA's vgg16.pt (instead of --weights, with --generator)")
    p.add_argument("--params", help="a params.yaml to take the settings and modes from")
    p.add_argument("--seed", type=non_negative_int, help="random seed (default 303)")
    p.add_argument("--batch", type=positive_int, help="targets per forward pass")
    p.add_argument("--precision", choices=("auto", "fp32", "tf32", "bf16"))
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser("work", help="one more worker of a stage whose work is shared (project@<mode>, synthetic, "
                                    "benchmark): start any number, anywhere the project folder is shared")
    p.add_argument("stage", help="a stage of dvc.yaml: project@<mode>, synthetic or benchmark")
    p.add_argument("--wait", action="store_true", help="return when the whole stage is done (default: when no "
                                                       "unit is left to claim)")
    p.add_argument("--repo", default=".", help="the project folder (default: here)")
    p.set_defaults(func=_cmd_work)

    p = sub.add_parser("doctor", help="print torch and CUDA versions, the devices, the CUDA ops' state and the "
                                      "time of one projection step")
    p.add_argument("--weights", default="weights", help="a download_weights folder to time (default weights; "
                                                        "without it a random generator of --resolution)")
    p.add_argument("--resolution", type=positive_int, default=256, help="of the random generator (default 256)")
    p.add_argument("--steps", type=positive_int, default=5, help="steps to time (default 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--gate", action="store_true", help="also check the precision modes against fp32 on these "
                   "weights and device (the quality gate that precision: auto consults; cached) and print the verdict")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("verify", help="check that this install computes what the README says, against the "
                                      "fixtures in the repository (NVIDIA's and the robust method's recorded "
                                      "outputs); writes a report, exits 1 if a check fails")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--out", default="verify", help="folder for report.md, report.html and report.json "
                                                   "(default verify)")
    p.add_argument("--quick", action="store_true", help="fewer faces and steps (the test suite's variant)")
    p.add_argument("--fixtures", help="the fixtures folder (default: tests/fixtures of this checkout)")
    p.add_argument("--official-src", default="", help="a checkout of NVlabs/stylegan2-ada-pytorch: the speed check "
                                                      "then times NVIDIA's own projector (default $RECON_OFFICIAL_SRC)")
    p.add_argument("--weights", default="weights", help="a download_weights folder: its VGG16 is used by the "
                                                        "precision gate and the bench (default weights; without "
                                                        "it a random-weight stand-in)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("info", help="print a generator checkpoint's configuration")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(f"recon {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
