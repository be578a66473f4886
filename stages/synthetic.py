"""DVC stage `synthetic`: sample faces from seeds and invert them over num_steps x latent_dist_reg_weight."""
import argparse
import shutil
import sys
from pathlib import Path

from _common import load_params, section

from recon.pipeline import synthetic_stage


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    syn = section(params, "synthetic")
    base = dict(section(params, "project")["default"])
    base.pop("batch_size", None)
    device = str(base.pop("device", "auto"))
    shutil.rmtree("data/synthetic", ignore_errors=True)
    runs = synthetic_stage(syn, base, Path("data/synthetic"), "weights", device)
    print(f"synthetic: {len(runs)} runs of {len(syn['seeds'])} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
