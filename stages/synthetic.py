"""DVC stage `synthetic`: sample faces from seeds and invert them over num_steps x latent_dist_reg_weight."""
import sys

from _common import stage_main

from recon import distributed
from recon.pipeline.stages import resolve_runtime, synthetic_stage, write_loss_table


def synthetic(params, args) -> int:
    runtime = params.project.runtime
    device, _ = resolve_runtime(runtime)
    workers = distributed.resolve_workers(runtime.workers, device)
    if workers > 1 and not distributed.launched():
        return distributed.relaunch("synthetic", workers, runtime.max_restarts, sys.argv)
    with distributed.Group(device) as group:
        runs = synthetic_stage(params.synthetic, params.project.default, args.out, args.weights, device, group=group)
        if group.rank.is_main:
            write_loss_table(args.out, args.losses)
            print(f"synthetic: {len(runs)} runs of {len(params.synthetic.seeds)} seeds")


if __name__ == "__main__":
    stage_main("synthetic", synthetic, __doc__, dict(weights="weights folder", out="output folder",
                                                     losses="loss table for dvc plots (CSV)"))
