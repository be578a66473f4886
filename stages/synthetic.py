"""DVC stage `synthetic`: sample faces from seeds and invert them over num_steps x latent_dist_reg_weight."""
import shutil
from pathlib import Path

from _common import stage_main

from recon.pipeline import resolve_runtime, synthetic_stage


def synthetic(params, args) -> int:
    device, _ = resolve_runtime(params.project.runtime)
    shutil.rmtree("data/synthetic", ignore_errors=True)
    runs = synthetic_stage(params.synthetic, params.project.default, Path("data/synthetic"), "weights", device)
    print(f"synthetic: {len(runs)} runs of {len(params.synthetic.seeds)} seeds")


if __name__ == "__main__":
    stage_main("synthetic", synthetic, __doc__)
