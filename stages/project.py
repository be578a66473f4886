"""DVC stage `project@<mode>`: restore every degraded face of one mode by latent optimization."""
import sys

from _common import stage_main

from recon.pipeline import distributed
from recon.pipeline.losses import write_loss_table
from recon.pipeline.project import project_stage
from recon.pipeline.runtime import resolve_device, resolve_workers


def project(params, args) -> int:
    params.ops(args.mode)                       # the mode must exist
    cfg = params.project.for_mode(args.mode)
    runtime = params.project.runtime
    device = resolve_device(runtime.device)
    workers = resolve_workers(runtime.workers, device)
    if workers > 1 and not distributed.launched():
        return distributed.relaunch(f"project {args.mode}", workers, runtime.max_restarts, sys.argv)
    with distributed.Group(device) as group:
        done = project_stage(args.mode, cfg, args.degraded, args.out, args.weights, runtime, device, group=group)
        if group.rank.is_main:
            write_loss_table(args.out, args.losses)
            print(f"project {args.mode}: restored {len(done)} faces"
                  + (f" here, the rest by {group.rank.world - 1} other workers" if group.rank.world > 1 else ""))
    return 0


def main(argv=None) -> int:
    return stage_main("project", project, __doc__, dict(degraded="the degrade stage's folder", weights="weights folder",
                                                     out="output folder", losses="loss table for dvc plots (CSV)"),
                   mode=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
