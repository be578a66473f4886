"""DVC stage `report`: reports/index.html (self-contained), reports/metrics.json, reports/plots/."""
import shutil
from pathlib import Path

from _common import stage_main

from recon.report import build_report


def report(params, args) -> int:
    shutil.rmtree("reports/plots", ignore_errors=True)
    summary = build_report(list(params.degrade), "data", "data/raw", "reports", Path(args.params).read_text(),
                           params.report.identity)
    print("report: reports/index.html; " + ", ".join(f"{m}: PSNR {v.get('psnr', float('nan')):.2f}"
                                                      for m, v in summary["summary"].items() if "psnr" in v))


if __name__ == "__main__":
    stage_main("report", report, __doc__)
