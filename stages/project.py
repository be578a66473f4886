"""DVC stage `project@<mode>`: recover every degraded face of one mode by latent optimization."""
import argparse
import sys

from _common import load_params, section

from recon.pipeline import default_batch_size, project_stage, projector_config
from recon.projector import ProjectionError
from recon.safe_pickle import CheckpointError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("mode")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    p = section(load_params(args.params), "project")
    run = dict(p["default"])
    batch_size = run.pop("batch_size", "auto")
    device = str(run.pop("device", "auto"))
    if batch_size == "auto":
        batch_size = default_batch_size(device)
    run.update(p.get(args.mode) or {})
    try:
        done = project_stage(args.mode, projector_config(run), f"data/degraded/{args.mode}",
                             f"data/projected/{args.mode}", "weights", int(batch_size), device)
    except (ProjectionError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"project {args.mode}: error: {exc}", file=sys.stderr)
        return 1
    print(f"project {args.mode}: projected {len(done)} faces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
