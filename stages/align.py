"""DVC stage `align`: FFHQ-align every face of every photo in a folder."""
from pathlib import Path

from _common import stage_main

from recon.data.align import AlignOptions, align_paths
from recon.pipeline.stages import check_resolution
from recon.model.weights import RECORD, resolve_weights


def align(params, args) -> None:
    p = params.align
    if (Path(args.weights) / RECORD).is_file():      # once download_weights has run
        check_resolution(params, resolve_weights(args.weights).generator, "weights.generator.source")
    opts = AlignOptions(size=p.resolution, detector=p.detector, upsample=p.upsample, min_score=p.min_score,
                        largest_only=p.largest_only, max_faces=p.max_faces, max_pixels=p.max_pixels)
    manifest = align_paths([args.photos], args.out, opts, overwrite=True)  # DVC owns the output folder
    n = sum(len(e["faces"]) for e in manifest["images"].values())
    skipped = [f"no face in {', '.join(manifest['no_face'])}"] if manifest["no_face"] else []
    skipped += [f"unreadable: {', '.join(u['photo'] for u in manifest['unreadable'])}"] if manifest["unreadable"] else []
    print(f"align: {n} faces from {len(manifest['images'])} photos" + "".join(f"; {s}" for s in skipped))


if __name__ == "__main__":
    stage_main("align", align, __doc__, dict(photos="folder of photos", out="output folder",
                                             weights="the download_weights folder, to check align.resolution "
                                                     "against the generator"))
