"""DVC stage `degrade@<mode>`: write each aligned face's degraded target (8-bit PNG) for one mode."""
import sys

from recon.pipeline.degrade import degrade_stage
from recon.pipeline.records import aligned_faces
from recon.stages._common import stage_main


def degrade(params, args) -> None:
    targets = degrade_stage(args.mode, params.ops(args.mode), aligned_faces(args.aligned), args.out,
                            seed=params.seeds.degrade, observed=params.observed(args.mode))
    skipped = f" ({len(targets.skipped)} skipped)" if targets.skipped else ""
    print(f"degrade {args.mode}: {len(targets.faces)} targets{skipped}")


def main(argv=None) -> int:
    return stage_main("degrade", degrade, __doc__, dict(aligned="the align stage's folder", out="output folder"),
                      mode=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
