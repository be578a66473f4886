"""DVC stage `download_weights`: fetch the generator and NVIDIA's VGG16, verify, convert once.

Raw downloads go to weights/cache/ (not a DVC output, so a partial download resumes and a file put
there by hand is used); the stage's outputs are weights/generator.safetensors (the project's
format), weights/vgg16.pt and weights/weights.json (sources and sha256 digests).
"""
import argparse
import json
import shutil
import sys
import urllib.parse
from pathlib import Path

from _common import load_params, section

from recon.checkpoint import convert
from recon.safe_pickle import CheckpointError
from recon.weights import DownloadError, fetch, resolve_source


def cache_name(source: str) -> str:
    return Path(urllib.parse.urlparse(resolve_source(source)).path).name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="weights")
    args = ap.parse_args()
    p = section(load_params(args.params), "weights")
    out, cache = Path(args.out), Path(args.out) / "cache"
    record = {}
    try:
        for key in ("generator", "vgg16"):
            src, digest = str(p[key]["source"]), str(p[key].get("sha256") or "")
            raw = cache / cache_name(src)
            got = fetch(src, raw, digest, hint=f"weights.{key}.source")
            record[key] = dict(source=resolve_source(src), file=str(raw), sha256=got, verified=bool(digest))
        convert(cache / cache_name(p["generator"]["source"]), out / "generator.safetensors", overwrite=True)
        shutil.copyfile(cache / cache_name(p["vgg16"]["source"]), out / "vgg16.pt")
    except (DownloadError, CheckpointError) as exc:
        print(f"download_weights: error: {exc}", file=sys.stderr)
        return 1
    (out / "weights.json").write_text(json.dumps(record, indent=1))
    for key, r in record.items():
        state = "verified" if r["verified"] else "recorded (set weights.%s.sha256 to pin it)" % key
        print(f"download_weights: {key} sha256 {r['sha256']} {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
