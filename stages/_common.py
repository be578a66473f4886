"""Shared by the stage scripts: make the checkout's own recon importable (DVC runs `python
stages/x.py`, which puts stages/ first on sys.path), read the validated params, and end through
recon's one runner."""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recon.config import Params, load_params  # noqa: E402
from recon.pipeline.distributed import current  # noqa: E402
from recon.runner import run  # noqa: E402


def stage_main(name: str, body, doc: str, paths: dict, mode: bool = False, argv=None) -> int:
    """Parse ``[mode] --<path> P ... [--params FILE]`` from ``argv`` (dvc.yaml's ``cmd`` names every
    path, so it is the one place that does), validate the whole params file, then run
    ``body(params, args)`` under the runner; returns the exit status."""
    ap = argparse.ArgumentParser(description=doc)
    if mode:
        ap.add_argument("mode")
    for flag, help_text in paths.items():
        ap.add_argument(f"--{flag}", required=True, help=help_text)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    label = current().label(f"{name} {args.mode}" if mode else name)   # "[rank k]" among several workers

    def go():
        params = load_params(args.params)
        return body(params, args)
    return run(label, go)


__all__ = ["ROOT", "Params", "stage_main"]
