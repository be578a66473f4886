"""The download_weights stage: obtain both networks, convert the generator, record them."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

from recon.config import params_key
from recon.data.imageio import write_json
from recon.errors import CheckpointError, DownloadError, DownloadInterrupted, ParamsError
from recon.model.checkpoint import convert, read_config
from recon.model.perceptual import load_vgg16
from recon.model.weights import RECORD, cache_dir, obtain, resolve_source, sha256_of, store


def check_resolution(params, generator_path, name: Optional[str] = None) -> None:
    """Refuse an ``align.resolution`` that differs from the generator's, as soon as the generator
    is known (download_weights, then align), not after align and degrade have run. ``name``: how
    to call the generator in the message (default: its path)."""
    R = read_config(generator_path)["img_resolution"]
    if params.align.resolution != R:
        raise ParamsError(f"{params_key('align.resolution')}: {params.align.resolution}, but the generator "
                          f"({name or generator_path}) makes {R}x{R} images; set align.resolution: {R}")


def weights_stage(params, out_dir) -> dict:
    """download_weights: obtain both networks (:func:`recon.model.weights.obtain`), convert the generator
    (the same checkpoint always gives the same bytes), check it against ``align.resolution``, put
    both in the per-user store by sha256 and write ``<out_dir>/weights.json`` (sources and
    digests: what the other stages depend on). Returns the record."""
    files = {"generator": params.weights.generator, "vgg16": params.weights.vgg16}
    record, paths, failures = {}, {}, []
    for key, spec in files.items():     # every missing file is named in one run
        try:
            paths[key], digest = obtain(spec.source, spec.sha256, hint=f"weights.{key}.source")
        except DownloadError as exc:
            failures.append(exc)
            continue
        record[key] = dict(source=resolve_source(spec.source), sha256=digest, verified=bool(spec.sha256))
    if failures:
        cut = sum(isinstance(e, DownloadInterrupted) for e in failures)
        head = [f"{len(failures) - cut} of {len(files)} weights files are missing"] if len(failures) > cut else []
        if cut:
            head.append(f"{cut} download{'s were' if cut > 1 else ' was'} interrupted (the next run resumes "
                        f"{'them' if cut > 1 else 'it'} where {'they' if cut > 1 else 'it'} stopped)")
        raise DownloadError("; ".join(head) + ":\n  " + "\n  ".join(str(e) for e in failures))

    (cache_dir() / "weights").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir() / "weights") as tmp:
        converted = Path(tmp) / "generator.safetensors"
        try:
            convert(paths["generator"], converted)
            load_vgg16(paths["vgg16"])
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (a cached download that does not parse: delete it and rerun to fetch "
                                  "it again)") from None
        check_resolution(params, converted, record["generator"]["source"])
        record["generator"]["converted_sha256"] = sha256_of(converted)
        store(converted, record["generator"]["converted_sha256"], ".safetensors")
    store(paths["vgg16"], record["vgg16"]["sha256"], ".pt")
    write_json(Path(out_dir) / RECORD, record)
    return record
