"""DVC stage `report`: reports/index.html (self-contained), reports/metrics.json, reports/plots/."""
import argparse
import shutil
import sys
from pathlib import Path

from _common import load_params, section

from recon.report import build_report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    modes = list(section(params, "degrade"))
    identity = bool(section(params, "report").get("identity", True))
    shutil.rmtree("reports/plots", ignore_errors=True)
    summary = build_report(modes, "data", "data/raw", "reports", Path(args.params).read_text(), identity)
    print("report: reports/index.html; " + ", ".join(f"{m}: PSNR {v.get('psnr', float('nan')):.2f}"
                                                      for m, v in summary["summary"].items() if "psnr" in v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
