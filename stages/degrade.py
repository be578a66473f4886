"""DVC stage `degrade@<mode>`: write each aligned face's degraded target (8-bit PNG) for one mode."""
import argparse
import sys

from _common import load_params, section

from recon.degrade import DegradationError
from recon.imageio import PhotoError
from recon.pipeline import degrade_stage


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("mode")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    spec = section(params, "degrade")[args.mode]
    try:
        targets = degrade_stage(args.mode, spec, "data/aligned", f"data/degraded/{args.mode}",
                                seed=int(section(params, "seeds")["degrade"]))
    except (DegradationError, PhotoError, FileNotFoundError) as exc:
        print(f"degrade {args.mode}: error: {exc}", file=sys.stderr)
        return 1
    print(f"degrade {args.mode}: {len(targets['faces'])} targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
