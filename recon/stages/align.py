"""DVC stage `align`: FFHQ-align every face of every photo in a folder."""
import sys
from pathlib import Path

from recon.data.align import align_paths
from recon.model.weights import RECORD, resolve_weights
from recon.pipeline.download import check_resolution
from recon.stages._common import stage_main


def align(params, args) -> None:
    if (Path(args.weights) / RECORD).is_file():      # once download_weights has run
        check_resolution(params, resolve_weights(args.weights).generator, "weights.generator.source")
    manifest = align_paths([args.photos], args.out, params.align, overwrite=True)  # DVC owns the output folder
    n = sum(len(e["faces"]) for e in manifest["images"].values())
    skipped = [f"no face in {', '.join(manifest['no_face'])}"] if manifest["no_face"] else []
    if manifest["unreadable"]:
        skipped.append(f"unreadable: {', '.join(u['photo'] for u in manifest['unreadable'])}")
    print(f"align: {n} faces from {len(manifest['images'])} photos" + "".join(f"; {s}" for s in skipped))


def main(argv=None) -> int:
    return stage_main("align", align, __doc__, dict(photos="folder of photos", out="output folder",
                                                 weights="the download_weights folder, to check align.resolution "
                                                         "against the generator"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
