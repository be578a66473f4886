"""DVC stage `degrade@<mode>`: write each aligned face's degraded target (8-bit PNG) for one mode."""
import sys

from recon.pipeline.degrade import degrade_stage
from recon.pipeline.records import aligned_faces
from recon.stages._common import stage_main


def degrade(params, args) -> None:
    mode = params.mode(args.mode)
    faces = aligned_faces(args.aligned)
    mine = [f for f in faces if mode.is_for(f.photo)]
    targets = degrade_stage(args.mode, params.ops(args.mode), mine, args.out, seed=params.seeds.degrade,
                            observed=mode.observed, photos=mode.photos)
    skipped = f" ({len(targets.skipped)} skipped)" if targets.skipped else ""
    others = f"; {len(faces) - len(mine)} faces of photos not for this mode" if len(mine) < len(faces) else ""
    print(f"degrade {args.mode}: {len(targets.faces)} targets{skipped}{others}")


def main(argv=None) -> int:
    return stage_main("degrade", degrade, __doc__, dict(aligned="the align stage's folder", out="output folder"),
                      mode=True, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
