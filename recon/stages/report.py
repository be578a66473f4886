"""DVC stage `report`: the self-contained HTML report, DVC metrics and the per-face detail."""
import json
import sys
from pathlib import Path

from recon.model.weights import RECORD, resolve_weights
from recon.report.render import build_report
from recon.stages._common import stage_main


def report(params, args) -> None:
    record = json.loads((Path(args.weights) / RECORD).read_text())
    summary = build_report(list(params.degrade), args.data, args.photos, args.out, Path(args.params).read_text(),
                           params.report, vgg=resolve_weights(args.weights).vgg16, weights=record)
    print("report: " + str(Path(args.out) / "index.html") + "; " + ", ".join(
        f"{m}: PSNR {v['psnr']:.2f} dB" for m, v in summary.items() if isinstance(v, dict) and "psnr" in v))


def main(argv=None) -> int:
    return stage_main("report", report, __doc__, dict(
        data="the data folder (degraded/, projected/, synthetic/)", photos="the original photos",
        weights="the download_weights folder (VGG16, for LPIPS)", out="output folder"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
