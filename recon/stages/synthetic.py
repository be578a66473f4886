"""DVC stage `synthetic`: sample faces from seeds and restore them over num_steps x latent_dist_reg_weight.

Any number of these may run at once (each claims cells of the grid); `recon work synthetic`
starts one more."""
import sys

from recon.pipeline.losses import write_loss_table
from recon.pipeline.synthetic import synthetic_stage
from recon.stages._common import stage_main, start_worker


def synthetic(params, args) -> int:
    runtime = params.project.runtime
    device, status = start_worker("synthetic", runtime)
    if status is not None:
        return status
    runs = synthetic_stage(params.synthetic, params.project.default, args.out, args.weights, device, runtime,
                           wait=args.wait, state_dir=args.state)
    write_loss_table(args.out, args.losses, path_columns=("setting", "seed"))
    print(f"synthetic: {len(runs)} runs of {len(params.synthetic.seeds)} seeds")
    return 0


def main(argv=None) -> int:
    return stage_main("synthetic", synthetic, __doc__, dict(weights="weights folder", out="output folder",
                                                            losses="loss table for dvc plots (CSV)"),
                      argv=argv, units=True)


if __name__ == "__main__":
    sys.exit(main())
