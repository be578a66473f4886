"""DVC stage `benchmark`: methods compared at equal budgets on faces sampled from the generator."""
from pathlib import Path

from _common import stage_main

from recon.pipeline.benchmark import run_benchmark
from recon.metrics import LPIPSMetric
from recon.pipeline.stages import load_models, resolve_runtime
from recon.model.weights import resolve_weights


def benchmark(params, args) -> None:
    files = resolve_weights(args.weights)
    device, batch = resolve_runtime(params.project.runtime, weights=files)
    G, features = load_models(files, device)
    lpips = LPIPSMetric(None, device, vgg=features.vgg)
    doc = run_benchmark(params.benchmark, dict(params.benchmark.methods), G, features, lpips, Path(args.out),
                        weights_digest=files.digest, batch_size=batch)
    for name, h in doc["headline"].items():
        print(f"benchmark: {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in h.items()))


if __name__ == "__main__":
    stage_main("benchmark", benchmark, __doc__, dict(weights="weights folder", out="output folder"))
