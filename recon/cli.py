"""The ``recon`` command: ``recon convert``, ``recon info`` (and more subcommands as stages land)."""
from __future__ import annotations

import argparse
import json
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon", description="Face restoration by StyleGAN2 inversion.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an official .pkl to the project's .safetensors format "
                                       "(the pickle is read safely: nothing in it is executed)")
    p.add_argument("src", help="official stylegan2-ada-pytorch / stylegan3 network pickle (.pkl)")
    p.add_argument("dst", help="output .safetensors path")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="print a generator checkpoint's configuration")
    p.add_argument("path")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FileExistsError, FileNotFoundError) as exc:
        print(f"recon {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
