"""DVC stage `results`: the restored photos and faces of every mode, as files to take home:
results/<mode>/<photo>.png (the restored faces pasted back) and results/<mode>/faces/<face>.png."""
import sys

from recon.pipeline.results import results_stage
from recon.stages._common import stage_main


def results(params, args) -> None:
    index = results_stage(list(params.degrade), args.data, args.photos, args.out)
    print("results: " + "; ".join(f"{m}: {len(v['photos'])} photos, {len(v['faces'])} faces in {args.out}/{m}"
                                  for m, v in index.items()))


def main(argv=None) -> int:
    return stage_main("results", results, __doc__, dict(data="the data folder (degraded/, projected/)",
                                                        photos="the original photos", out="output folder"),
                      argv=argv)


if __name__ == "__main__":
    sys.exit(main())
