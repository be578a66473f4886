"""The ``recon`` command: ``convert``, ``info``, ``align``, ``project`` (the pipeline's steps, for direct use)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PhotoError
from .runner import run


def _cmd_convert(args) -> int:
    from .checkpoint import convert

    out = convert(args.src, args.dst, overwrite=args.force)
    print(f"wrote {out}")
    return 0


def _cmd_info(args) -> int:
    from .checkpoint import load_generator

    G = load_generator(args.path)
    info = dict(G.config, num_ws=G.num_ws, num_params=sum(p.numel() for p in G.parameters()))
    print(json.dumps(info, indent=2))
    return 0


def _cmd_align(args) -> int:
    from .align import AlignOptions, align_paths

    opts = AlignOptions(size=args.size, detector=args.detector, upsample=args.upsample, min_score=args.min_score,
                        largest_only=args.largest, max_faces=args.max_faces)
    manifest = align_paths(args.inputs, args.out, opts, overwrite=args.force)
    n = sum(len(e["faces"]) for e in manifest["images"].values())
    print(f"aligned {n} faces from {len(manifest['images'])} photos into {args.out}")
    return 0


def _cmd_project(args) -> int:
    import torch

    from .checkpoint import load_generator
    from .degrade import Degradation, from_uint8, to_uint8
    from .imageio import list_photos, load_photo, save_png
    from .perceptual import VGGFeatures, load_vgg16
    from .errors import ParamsError
    from .config import BlurOp, DownsampleOp, GrayscaleOp, ProjectorConfig
    from .pipeline import resolve_device
    from .projector import Projector

    device = resolve_device(args.device, key="--device")
    cfg = ProjectorConfig(num_steps=args.steps, latent_space=args.space, seed=args.seed,
                          latent_dist_reg_weight=args.latent_reg)
    ops = {"none": [], "blur": [BlurOp()], "grayscale": [GrayscaleOp()], "sr4": [DownsampleOp(factor=4)]}[args.degrade]
    G = load_generator(args.generator, device=device)
    features = VGGFeatures(load_vgg16(args.vgg, device))
    d = Degradation(ops, G.img_resolution) if ops else None
    paths = list_photos(args.targets)
    out = Path(args.out)
    done = [p for p in paths if (out / p.stem / "image.png").exists()]
    if done and not args.force:
        raise ParamsError(f"{out / done[0].stem}: already holds a result (add --force to replace it)")
    projector = Projector(G, features, cfg)
    for start in range(0, len(paths), args.batch):
        chunk = paths[start:start + args.batch]
        imgs = []
        for p in chunk:
            rgb, _ = load_photo(p)
            if rgb.shape[:2] != (G.img_resolution, G.img_resolution):
                raise PhotoError(f"{p}: {rgb.shape[1]}x{rgb.shape[0]}, the generator makes "
                                 f"{G.img_resolution}x{G.img_resolution} (align it with --size)")
            imgs.append(from_uint8(rgb))
        targets = torch.cat(imgs)
        if d is not None:  # what the pipeline does: degrade once, as an 8-bit image
            targets = from_uint8(to_uint8(d.target(targets)))
        for p, t in zip(chunk, to_uint8(targets)):
            save_png(out / p.stem / "target.png", t)
        for res in projector.project(targets, d, names=[p.stem for p in chunk],
                                     snapshot_path=out / f".snapshot{start}.pt"):
            res.save(out / res.name)
        (out / f".snapshot{start}.pt").unlink(missing_ok=True)
    print(f"projected {len(paths)} images into {out}")
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description="Face restoration by StyleGAN2 inversion.")
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

    p = sub.add_parser("project", help="project aligned faces into a generator (optionally degraded first)")
    p.add_argument("targets", nargs="+", metavar="IMAGE_OR_DIR", help="aligned faces at the generator's size")
    p.add_argument("--generator", required=True, help=".pkl or .safetensors")
    p.add_argument("--vgg", required=True, help="NVIDIA's vgg16.pt")
    p.add_argument("--out", required=True)
    p.add_argument("--degrade", choices=("none", "blur", "grayscale", "sr4"), default="none",
                   help="blur: kernel 21 sigma 6; sr4: 4x super-resolution (params.yaml has every option)")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--space", choices=("w", "w+", "w->w+"), default="w")
    p.add_argument("--latent-reg", type=non_negative_float, default=0.0, help="latent_dist_reg_weight")
    p.add_argument("--batch", type=positive_int, default=4, help="targets per forward pass")
    p.add_argument("--seed", type=int, default=303)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true", help="replace results already in --out")
    p.set_defaults(func=_cmd_project)

    p = sub.add_parser("info", help="print a generator checkpoint's configuration")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(f"recon {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
