"""The ``recon`` command: ``recon convert``, ``recon info`` (and more subcommands as stages land)."""
from __future__ import annotations

import argparse
import json
import sys

from .imageio import PhotoError
from .safe_pickle import CheckpointError


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

    p = sub.add_parser("info", help="print a generator checkpoint's configuration")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, PhotoError, FileExistsError, FileNotFoundError) as exc:
        print(f"recon {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
