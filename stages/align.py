"""DVC stage `align`: FFHQ-align every face of every photo in data/raw into data/aligned."""
import argparse
import sys

from _common import load_params, section

from recon.align import AlignOptions, align_paths
from recon.imageio import PhotoError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--src", default="data/raw")
    ap.add_argument("--out", default="data/aligned")
    args = ap.parse_args()
    p = section(load_params(args.params), "align")
    opts = AlignOptions(size=int(p["size"]), detector=str(p["detector"]), upsample=int(p["upsample"]),
                        min_score=float(p["min_score"]), largest_only=bool(p["largest_only"]),
                        max_faces=int(p["max_faces"]), max_pixels=int(p["max_pixels"]))
    try:
        manifest = align_paths([args.src], args.out, opts, overwrite=True)  # DVC owns data/aligned
    except PhotoError as exc:
        print(f"align: error: {exc}", file=sys.stderr)
        return 1
    n = sum(len(e["faces"]) for e in manifest["images"].values())
    print(f"align: {n} faces from {len(manifest['images'])} photos; no face in: {manifest['no_face'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
