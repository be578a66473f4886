"""DVC stage `align`: FFHQ-align every face of every photo in a folder."""
from _common import stage_main

from recon.align import AlignOptions, align_paths
from recon.pipeline import check_resolution


def align(params, args) -> int:
    p = params.align
    check_resolution(params, args.generator)   # once download_weights has written it
    opts = AlignOptions(size=p.resolution, detector=p.detector, upsample=p.upsample, min_score=p.min_score,
                        largest_only=p.largest_only, max_faces=p.max_faces, max_pixels=p.max_pixels)
    manifest = align_paths([args.photos], args.out, opts, overwrite=True)  # DVC owns the output folder
    n = sum(len(e["faces"]) for e in manifest["images"].values())
    print(f"align: {n} faces from {len(manifest['images'])} photos; no face in: {manifest['no_face'] or 'none'}")


if __name__ == "__main__":
    stage_main("align", align, __doc__, dict(photos="folder of photos", out="output folder",
                                             generator="the generator, to check align.resolution against"))
