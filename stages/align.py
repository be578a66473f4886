"""DVC stage `align`: FFHQ-align every face of every photo in data/raw into data/aligned."""
from _common import stage_main

from recon.align import AlignOptions, align_paths
from recon.pipeline import check_resolution


def align(params, args) -> int:
    p = params.align
    check_resolution(params, "weights/generator.safetensors")   # when download_weights has run
    opts = AlignOptions(size=p.resolution, detector=p.detector, upsample=p.upsample, min_score=p.min_score,
                        largest_only=p.largest_only, max_faces=p.max_faces, max_pixels=p.max_pixels)
    manifest = align_paths(["data/raw"], "data/aligned", opts, overwrite=True)  # DVC owns data/aligned
    n = sum(len(e["faces"]) for e in manifest["images"].values())
    print(f"align: {n} faces from {len(manifest['images'])} photos; no face in: {manifest['no_face'] or 'none'}")


if __name__ == "__main__":
    stage_main("align", align, __doc__)
