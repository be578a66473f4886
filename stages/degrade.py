"""DVC stage `degrade@<mode>`: write each aligned face's degraded target (8-bit PNG) for one mode."""
from _common import stage_main

from recon.pipeline import degrade_stage


def degrade(params, args) -> int:
    ops = params.ops(args.mode)
    targets = degrade_stage(args.mode, ops, "data/aligned", f"data/degraded/{args.mode}", seed=params.seeds.degrade)
    print(f"degrade {args.mode}: {len(targets['faces'])} targets")


if __name__ == "__main__":
    stage_main("degrade", degrade, __doc__, mode=True)
