"""DVC stage `project@<mode>`: recover every degraded face of one mode by latent optimization."""
from _common import stage_main

from recon.pipeline import project_stage, resolve_runtime


def project(params, args) -> int:
    params.ops(args.mode)                       # the mode must exist
    cfg = params.project.for_mode(args.mode)
    device, batch_size = resolve_runtime(params.project.runtime)
    done = project_stage(args.mode, cfg, f"data/degraded/{args.mode}", f"data/projected/{args.mode}", "weights",
                         batch_size, device)
    print(f"project {args.mode}: projected {len(done)} faces")


if __name__ == "__main__":
    stage_main("project", project, __doc__, mode=True)
