"""DVC stage `project@<mode>`: recover every degraded face of one mode by latent optimization."""
import sys

from _common import stage_main

from recon import distributed
from recon.pipeline.stages import project_stage, resolve_runtime, write_loss_table


def project(params, args) -> int:
    params.ops(args.mode)                       # the mode must exist
    cfg = params.project.for_mode(args.mode)
    runtime = params.project.runtime
    device, batch_size = resolve_runtime(runtime, weights=args.weights)
    workers = distributed.resolve_workers(runtime.workers, device)
    if workers > 1 and not distributed.launched():
        return distributed.relaunch(f"project {args.mode}", workers, runtime.max_restarts, sys.argv)
    with distributed.Group(device) as group:
        done = project_stage(args.mode, cfg, args.degraded, args.out, args.weights, batch_size, device, group=group,
                             compile=runtime.compile)
        if group.rank.is_main:
            write_loss_table(args.out, args.losses)
            print(f"project {args.mode}: projected {len(done)} faces"
                  + (f" here, the rest by {group.rank.world - 1} other workers" if group.rank.world > 1 else ""))


if __name__ == "__main__":
    stage_main("project", project, __doc__, dict(degraded="the degrade stage's folder", weights="weights folder",
                                                 out="output folder", losses="loss table for dvc plots (CSV)"),
               mode=True)
