"""DVC stage `benchmark`: methods compared at equal budgets on faces sampled from the generator."""
from pathlib import Path

from _common import stage_main

from recon.benchmark import run_benchmark
from recon.metrics import LPIPSMetric
from recon.pipeline import load_models, resolve_runtime, weight_files
from recon.weights import sha256_of


def benchmark(params, args) -> int:
    device, batch = resolve_runtime(params.project.runtime, weights=args.weights)
    generator, vgg = weight_files(args.weights)
    G, features = load_models(args.weights, device)
    lpips = LPIPSMetric(None, device, vgg=features.vgg)
    doc = run_benchmark(params.benchmark, dict(params.benchmark.methods), G, features, lpips, Path(args.out),
                        weights_digest=sha256_of(generator) + sha256_of(vgg), batch_size=batch)
    for name, h in doc["headline"].items():
        print(f"benchmark: {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in h.items()))


if __name__ == "__main__":
    stage_main("benchmark", benchmark, __doc__, dict(weights="weights folder", out="output folder"))
