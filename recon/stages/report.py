"""DVC stage `report`: the self-contained HTML report, DVC metrics and the per-face detail."""
import json
import sys
from pathlib import Path

from recon.model.weights import RECORD, resolve_weights
from recon.report.render import build_report
from recon.stages._common import stage_main


def report(params, args) -> None:
    record = json.loads((Path(args.weights) / RECORD).read_text())
    summary = build_report(list(params.degrade), args.data, args.out, resolved_params(params),
                           params.report, vgg=resolve_weights(args.weights).vgg16, weights=record,
                           results_dir=args.results, params_file=args.params, profile=params.profile)
    print("report: " + str(Path(args.out) / "index.html") + "; " + ", ".join(
        f"{m}: PSNR {v['psnr']:.2f} dB" for m, v in summary.items() if isinstance(v, dict) and "psnr" in v))


def resolved_params(params) -> str:
    """The params as the stages ran them (the profile applied, every default filled in), as YAML."""
    import io

    from ruamel.yaml import YAML

    data = params.model_dump(mode="json", exclude_none=True)
    data["degrade"] = {name: dict(m["op"], observed=m["observed"], **({"photos": m["photos"]} if "photos" in m else {}))
                       for name, m in data["degrade"].items()}
    buf = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = None
    yaml.dump(data, buf)
    return buf.getvalue()


def main(argv=None) -> int:
    return stage_main("report", report, __doc__, dict(
        data="the data folder (degraded/, projected/, synthetic/)",
        weights="the download_weights folder (VGG16, for LPIPS)", results="the results stage's folder",
        out="output folder"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
