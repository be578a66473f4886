"""DVC stage `synthetic`: sample faces from seeds and restore them over num_steps x latent_dist_reg_weight."""
import sys

from _common import stage_main

from recon.pipeline import distributed
from recon.pipeline.losses import write_loss_table
from recon.pipeline.runtime import resolve_device, resolve_workers
from recon.pipeline.synthetic import synthetic_stage


def synthetic(params, args) -> int:
    runtime = params.project.runtime
    device = resolve_device(runtime.device)
    workers = resolve_workers(runtime.workers, device)
    if workers > 1 and not distributed.launched():
        return distributed.relaunch("synthetic", workers, runtime.max_restarts, sys.argv)
    with distributed.Group(device) as group:
        runs = synthetic_stage(params.synthetic, params.project.default, args.out, args.weights, device, group=group)
        if group.rank.is_main:
            write_loss_table(args.out, args.losses)
            print(f"synthetic: {len(runs)} runs of {len(params.synthetic.seeds)} seeds")
    return 0


def main(argv=None) -> int:
    return stage_main("synthetic", synthetic, __doc__, dict(weights="weights folder", out="output folder",
                                                         losses="loss table for dvc plots (CSV)"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
