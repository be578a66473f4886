"""DVC stage `project@<mode>`: restore every degraded face of one mode by latent optimization.

Any number of these may run at once on the same folders (each claims batches of faces until none
is left); `recon work project@<mode>` starts one more."""
import os
import sys

from recon.pipeline.losses import write_loss_table
from recon.pipeline.project import project_stage
from recon.stages._common import stage_main, start_worker


def project(params, args) -> int:
    params.ops(args.mode)                       # the mode must exist
    runtime = params.project.runtime
    device, status = start_worker(f"project {args.mode}", runtime)
    if status is not None:
        return status
    done = project_stage(args.mode, params.project.for_mode(args.mode), args.degraded, args.out, args.weights,
                         runtime, device, wait=args.wait, workers=int(os.environ.get("WORLD_SIZE", "1")),
                         state_dir=args.state)
    write_loss_table(args.out, args.losses)
    print(f"project {args.mode}: restored {len(done)} faces here, on {device}")
    return 0


def main(argv=None) -> int:
    return stage_main("project", project, __doc__, dict(degraded="the degrade stage's folder", weights="weights folder",
                                                        out="output folder", losses="loss table for dvc plots (CSV)"),
                      mode=True, argv=argv, units=True)


if __name__ == "__main__":
    sys.exit(main())
