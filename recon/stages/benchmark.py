"""DVC stage `benchmark`: methods compared at equal budgets on faces sampled from the generator.

Any number of these may run at once (each claims cells and methods); `recon work benchmark`
starts one more."""
import sys

from recon.metrics import LPIPSMetric
from recon.model import load_models
from recon.model.weights import resolve_weights
from recon.pipeline.benchmark import run_benchmark
from recon.stages._common import stage_main, start_worker


def benchmark(params, args) -> int:
    runtime = params.project.runtime
    device, status = start_worker("benchmark", runtime)
    if status is not None:
        return status
    files = resolve_weights(args.weights)
    G, vgg = load_models(files, device)
    doc = run_benchmark(params.benchmark, params.benchmark_methods(), G, vgg, LPIPSMetric(vgg, device),
                        args.out, weights_digest=files.digest, batch_size=runtime.batch_size,
                        lease_s=runtime.lease_s, wait=args.wait, state_dir=args.state)
    for name, h in doc.get("headline", {}).items():
        print(f"benchmark: {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in h.items()))
    return 0


def main(argv=None) -> int:
    return stage_main("benchmark", benchmark, __doc__, dict(weights="weights folder", out="output folder"),
                      argv=argv, units=True)


if __name__ == "__main__":
    sys.exit(main())
