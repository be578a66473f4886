"""DVC stage `project@<mode>`: recover every degraded face of one mode by latent optimization."""
from _common import stage_main

from recon.pipeline import project_stage, resolve_runtime, write_loss_table


def project(params, args) -> int:
    params.ops(args.mode)                       # the mode must exist
    cfg = params.project.for_mode(args.mode)
    device, batch_size = resolve_runtime(params.project.runtime)
    done = project_stage(args.mode, cfg, args.degraded, args.out, args.weights, batch_size, device)
    write_loss_table(args.out, args.losses)
    print(f"project {args.mode}: projected {len(done)} faces")


if __name__ == "__main__":
    stage_main("project", project, __doc__, dict(degraded="the degrade stage's folder", weights="weights folder",
                                                 out="output folder", losses="loss table for dvc plots (CSV)"),
               mode=True)
