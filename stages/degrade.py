"""DVC stage `degrade@<mode>`: write each aligned face's degraded target (8-bit PNG) for one mode."""
from _common import stage_main

from recon.pipeline.stages import aligned_faces, degrade_stage


def degrade(params, args) -> int:
    ops = params.ops(args.mode)
    targets = degrade_stage(args.mode, ops, aligned_faces(args.aligned), args.out, seed=params.seeds.degrade,
                            observed=params.observed(args.mode))
    print(f"degrade {args.mode}: {len(targets['faces'])} targets")


if __name__ == "__main__":
    stage_main("degrade", degrade, __doc__, dict(aligned="the align stage's folder", out="output folder"), mode=True)
