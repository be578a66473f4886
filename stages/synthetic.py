"""DVC stage `synthetic`: sample faces from seeds and invert them over num_steps x latent_dist_reg_weight."""
import shutil

from _common import stage_main

from recon.pipeline import resolve_runtime, synthetic_stage, write_loss_table


def synthetic(params, args) -> int:
    device, _ = resolve_runtime(params.project.runtime)
    shutil.rmtree(args.out, ignore_errors=True)
    runs = synthetic_stage(params.synthetic, params.project.default, args.out, args.weights, device)
    write_loss_table(args.out, args.losses)
    print(f"synthetic: {len(runs)} runs of {len(params.synthetic.seeds)} seeds")


if __name__ == "__main__":
    stage_main("synthetic", synthetic, __doc__, dict(weights="weights folder", out="output folder",
                                                     losses="loss table for dvc plots (CSV)"))
