"""Benchmark the projector: seconds per step and peak memory over resolutions and batch sizes.

    python -m recon.bench [--resolutions 64 128 256] [--batch 1 4] [--steps 10] [--vgg weights/vgg16.pt]

Each configuration runs in its own process (so the peak memory is its own) with random-weight
generators of the official config-f shape (``--channel-base``/``--channel-max`` shrink them for
CPUs). "batched" optimizes B targets in one forward pass; "official, 1 at a time" runs the same
B targets one after the other, as NVIDIA's projector must. Without ``--vgg`` (and without
weights/vgg16.pt) a random-weight VGG16 of the real architecture and cost stands in.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VGG_STAGES = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class RandomVGG16(torch.nn.Module):
    """VGG16 conv stack with LPIPS-style taps and random weights: the cost of vgg16.pt, not its values."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        convs, cin = [], 3
        for stage in VGG_STAGES:
            block = []
            for cout in stage:
                c = torch.nn.Conv2d(cin, cout, 3, padding=1)
                with torch.no_grad():
                    c.weight.copy_(torch.randn(c.weight.shape, generator=g) * (2 / (cin * 9)) ** 0.5)
                    c.bias.zero_()
                block.append(c)
                cin = cout
            convs.append(torch.nn.ModuleList(block))
        self.stages = torch.nn.ModuleList(convs)

    def forward(self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False):
        x = img / 127.5 - 1
        feats = []
        for i, stage in enumerate(self.stages):
            if i:
                x = F.max_pool2d(x, 2)
            for conv in stage:
                x = F.relu(conv(x))
            n = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)
            feats.append((n / float(x.shape[2] * x.shape[3]) ** 0.5).flatten(1))
        return torch.cat(feats, 1)


def _generator(res: int, channel_base: int, channel_max: int, device):
    from .networks import Generator
    torch.manual_seed(0)
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max,
                                        num_fp16_res=4, conv_clamp=256))
    return G.eval().requires_grad_(False).to(device)


def _features(vgg_path, device):
    from .perceptual import VGGFeatures, load_vgg16
    if vgg_path:
        return VGGFeatures(load_vgg16(vgg_path, device)), Path(vgg_path).name
    return VGGFeatures(RandomVGG16().eval().requires_grad_(False).to(device)), "random VGG16"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_one(res, batch, steps, mode, channel_base, channel_max, vgg, device) -> dict:
    from .projector import Projector, ProjectorConfig

    device = torch.device(device)
    G = _generator(res, channel_base, channel_max, device)
    feats, vgg_name = _features(vgg, device)
    targets = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    cfg = ProjectorConfig(num_steps=steps, w_avg_samples=1000, snapshot_every=0)
    proj = Projector(G, feats, cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # warm-up: builds CUDA kernels / allocator pools, not timed
    Projector(G, feats, ProjectorConfig(num_steps=2, w_avg_samples=1000, snapshot_every=0)).project(
        targets[:1], progress=False)
    _sync(device)
    t0 = time.perf_counter()
    if mode == "batched":
        proj.project(targets, progress=False)
    else:
        for i in range(batch):
            proj.project(targets[i:i + 1], progress=False)
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return dict(res=res, batch=batch, mode=mode, s_per_step=elapsed / steps,
                s_per_target_step=elapsed / steps / batch, peak_mib=peak / 2 ** 20, vgg=vgg_name,
                device=str(device))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--channel-base", type=int, default=32768)
    ap.add_argument("--channel-max", type=int, default=512)
    ap.add_argument("--vgg", default="weights/vgg16.pt" if Path("weights/vgg16.pt").is_file() else "")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        res, batch, mode = args.one.split(":")
        print(json.dumps(run_one(int(res), int(batch), args.steps, mode, args.channel_base, args.channel_max,
                                 args.vgg, args.device)))
        return 0

    rows = []
    for res in args.resolutions:
        for batch in args.batch:
            for mode in (("batched", "official") if batch > 1 else ("batched",)):
                cmd = [sys.executable, "-m", "recon.bench", "--one", f"{res}:{batch}:{mode}", "--steps",
                       str(args.steps), "--channel-base", str(args.channel_base), "--channel-max",
                       str(args.channel_max), "--vgg", args.vgg, "--device", args.device]
                out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if out.returncode != 0:
                    print(out.stderr[-2000:], file=sys.stderr)
                    return out.returncode
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"  {res:>5} px  batch {batch:>3}  {mode:<9} {r['s_per_target_step']:.4f} s/target-step",
                      file=sys.stderr)

    print(f"\nprojector benchmark on {rows[0]['device']} ({torch.get_num_threads()} threads), "
          f"{args.steps} steps, VGG: {rows[0]['vgg']}, channel_base {args.channel_base}, "
          f"channel_max {args.channel_max}\n")
    head = f"| {'res':>5} | {'batch':>5} | {'mode':<22} | {'s/step':>8} | {'s/target/step':>13} | {'speed-up':>8} | {'peak MiB':>9} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        base = next((o for o in rows if o["res"] == r["res"] and o["batch"] == r["batch"] and o["mode"] == "official"),
                    None)
        speed = base["s_per_target_step"] / r["s_per_target_step"] if base else 1.0
        mode = "official, 1 at a time" if r["mode"] == "official" else "batched"
        print(f"| {r['res']:>5} | {r['batch']:>5} | {mode:<22} | {r['s_per_step']:>8.4f} | "
              f"{r['s_per_target_step']:>13.4f} | {speed:>7.2f}x | {r['peak_mib']:>9.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
