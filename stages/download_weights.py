"""DVC stage `download_weights`: fetch the generator and NVIDIA's VGG16, verify, convert once.

Raw downloads go to <out>/cache/ (not a DVC output, so a partial download resumes and a file put
there by hand is used); the stage's outputs are <out>/generator.safetensors (the project's
format), <out>/vgg16.pt (a hard link to the download: the file is on disk once) and
<out>/weights.json (sources and sha256 digests). The outputs stay out of DVC's cache
(``cache: false`` in dvc.yaml), which would otherwise hold a third copy of each.
"""
import json
import urllib.parse
from pathlib import Path

from _common import stage_main

from recon.checkpoint import convert
from recon.errors import CheckpointError, DownloadError
from recon.perceptual import load_vgg16
from recon.pipeline import check_resolution
from recon.weights import fetch, link_or_copy, resolve_source

def download_weights(params, args) -> int:
    out = Path(args.out)

    def cache_path(source: str) -> Path:
        return out / "cache" / Path(urllib.parse.urlparse(resolve_source(source)).path).name

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
        convert(gen_raw, out / "generator.safetensors", overwrite=True)
        load_vgg16(vgg_raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (a cached download that does not parse: delete it and rerun to fetch "
                              "it again)") from None
    link_or_copy(vgg_raw, out / "vgg16.pt")
    check_resolution(params, out / "generator.safetensors")
    (out / "weights.json").write_text(json.dumps(record, indent=1))
    for key, r in record.items():
        state = "verified" if r["verified"] else f"recorded (set weights.{key}.sha256 to pin it)"
        print(f"download_weights: {key} sha256 {r['sha256']} {state}")


if __name__ == "__main__":
    stage_main("download_weights", download_weights, __doc__, dict(out="weights folder"))
