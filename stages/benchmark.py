"""DVC stage `benchmark`: methods compared at equal budgets on faces sampled from the generator."""
import sys

from _common import stage_main

from recon.metrics import LPIPSMetric
from recon.model import load_models
from recon.model.weights import resolve_weights
from recon.pipeline.benchmark import run_benchmark
from recon.pipeline.runtime import resolve_batch, resolve_device


def benchmark(params, args) -> None:
    files = resolve_weights(args.weights)
    device = resolve_device(params.project.runtime.device)
    G, vgg = load_models(files, device)
    batch = resolve_batch(params.project.runtime, device, G, vgg)
    doc = run_benchmark(params.benchmark, params.benchmark_methods(), G, vgg, LPIPSMetric(vgg, device),
                        args.out, weights_digest=files.digest, batch_size=batch)
    for name, h in doc["headline"].items():
        print(f"benchmark: {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in h.items()))


def main(argv=None) -> int:
    return stage_main("benchmark", benchmark, __doc__, dict(weights="weights folder", out="output folder"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
