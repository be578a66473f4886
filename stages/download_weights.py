"""DVC stage `download_weights`: obtain the generator and NVIDIA's VGG16, verify, convert once.

Downloads go to recon's per-user cache (``recon.weights.cache_dir()``: ``$RECON_CACHE_DIR`` or
``~/.cache/recon``), shared by every checkout and experiment, so a partial download resumes and a
file put there by hand is used; a local source is read where it is. The stage's outputs are
<out>/generator.safetensors (the project's format; the same checkpoint always converts to the
same bytes), <out>/vgg16.pt (a hard link to the download or the local file) and
<out>/weights.json (sources and sha256 digests). DVC caches them with links (``.dvc/config``:
reflink or hardlink before copy), so each file is on disk once, and queued or ``--temp``
experiments check them out from the cache instead of running this stage again.
"""
from pathlib import Path

from _common import stage_main

from recon.checkpoint import convert
from recon.errors import CheckpointError, DownloadError
from recon.imageio import write_json
from recon.perceptual import load_vgg16
from recon.pipeline import check_resolution
from recon.weights import link_or_copy, obtain, resolve_source, sha256_of


def download_weights(params, args) -> None:
    out = Path(args.out)
    files = {"generator": params.weights.generator, "vgg16": params.weights.vgg16}
    record, paths, failures = {}, {}, []
    for key, spec in files.items():     # every missing file is named in one run
        try:
            paths[key], digest = obtain(spec.source, spec.sha256, hint=f"weights.{key}.source")
        except DownloadError as exc:
            failures.append(str(exc))
            continue
        record[key] = dict(source=resolve_source(spec.source), sha256=digest, verified=bool(spec.sha256))
    if failures:
        raise DownloadError(f"{len(failures)} of {len(files)} weights files are missing:\n  " + "\n  ".join(failures))

    try:
        convert(paths["generator"], out / "generator.safetensors", overwrite=True)
        load_vgg16(paths["vgg16"])
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (a cached download that does not parse: delete it and rerun to fetch "
                              "it again)") from None
    link_or_copy(paths["vgg16"], out / "vgg16.pt")
    check_resolution(params, out / "generator.safetensors")
    record["generator"]["converted_sha256"] = sha256_of(out / "generator.safetensors")
    write_json(out / "weights.json", record)
    for key, r in record.items():
        state = "verified" if r["verified"] else f"recorded (set weights.{key}.sha256 to pin it)"
        print(f"download_weights: {key} sha256 {r['sha256']} {state}")


if __name__ == "__main__":
    stage_main("download_weights", download_weights, __doc__, dict(out="weights folder"))
