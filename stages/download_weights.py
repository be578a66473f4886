"""DVC stage `download_weights`: fetch the generator and NVIDIA's VGG16, verify, convert once.

Raw downloads go to weights/cache/ (not a DVC output, so a partial download resumes and a file put
there by hand is used); the stage's outputs are weights/generator.safetensors (the project's
format), weights/vgg16.pt and weights/weights.json (sources and sha256 digests).
"""
import json
import shutil
import urllib.parse
from pathlib import Path

from _common import stage_main

from recon.checkpoint import convert
from recon.errors import CheckpointError, DownloadError
from recon.perceptual import load_vgg16
from recon.pipeline import check_resolution
from recon.weights import fetch, resolve_source

OUT = Path("weights")
CACHE = OUT / "cache"


def cache_path(source: str) -> Path:
    return CACHE / Path(urllib.parse.urlparse(resolve_source(source)).path).name


def download_weights(params, args) -> int:
    files = {"generator": params.weights.generator, "vgg16": params.weights.vgg16}
    record, failures = {}, []
    for key, spec in files.items():     # every missing file is named in one run
        try:
            got = fetch(spec.source, cache_path(spec.source), spec.sha256, hint=f"weights.{key}.source")
        except DownloadError as exc:
            failures.append(str(exc))
            continue
        record[key] = dict(source=resolve_source(spec.source), file=str(cache_path(spec.source)), sha256=got,
                           verified=bool(spec.sha256))
    if failures:
        raise DownloadError(f"{len(failures)} of {len(files)} weights files are missing:\n  " + "\n  ".join(failures))

    gen_raw, vgg_raw = cache_path(files["generator"].source), cache_path(files["vgg16"].source)
    try:
        convert(gen_raw, OUT / "generator.safetensors", overwrite=True)
        load_vgg16(vgg_raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (a cached download that does not parse: delete it and rerun to fetch "
                              "it again)") from None
    shutil.copyfile(vgg_raw, OUT / "vgg16.pt")
    check_resolution(params, OUT / "generator.safetensors")
    (OUT / "weights.json").write_text(json.dumps(record, indent=1))
    for key, r in record.items():
        state = "verified" if r["verified"] else f"recorded (set weights.{key}.sha256 to pin it)"
        print(f"download_weights: {key} sha256 {r['sha256']} {state}")


if __name__ == "__main__":
    stage_main("download_weights", download_weights, __doc__)
