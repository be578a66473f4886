"""DVC stage `download_weights`: obtain the generator and NVIDIA's VGG16, verify, convert once.

The files live outside the checkout, in recon's per-user cache (``recon.weights.cache_dir()``:
``$RECON_CACHE_DIR``, else ``~/.cache/recon``), shared by every checkout and experiment on the
machine: downloads in ``downloads/`` (a partial download resumes, a file put there by hand is
used; a local source is read where it is), and the two networks the stages use in ``weights/``,
named by their sha256 (the converted generator, and a hard link to the VGG16 file). The stage's
one output is <out>/weights.json: the sources and the sha256 of both networks. The stages that
use the weights depend on it and find the files by digest, so a queued or ``--temp``
experiment checks out that small file and runs nothing here, and the same checkpoint (always
converted to the same bytes) changes nothing downstream.
"""
import sys

from recon.pipeline.download import weights_stage
from recon.stages._common import stage_main


def download_weights(params, args) -> None:
    for key, r in weights_stage(params, args.out).items():
        state = "verified" if r["verified"] else f"recorded (set weights.{key}.sha256 to pin it)"
        print(f"download_weights: {key} sha256 {r['sha256']} {state}")


def main(argv=None) -> int:
    return stage_main("download_weights", download_weights, __doc__, dict(out="weights folder"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
