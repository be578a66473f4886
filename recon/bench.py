"""Benchmark the projector against what NVIDIA's projector does, one table.

    python -m recon.bench [--shapes 128:8192:256 256:16384:512] [--batch 1 4] [--compile off on]
                          [--ops auto ref] [--precision fp32 bf16] [--steps 6] [--repeats 3]
                          [--vgg vgg16.pt] [--device cpu] [--timeout 600]

Contenders per shape (resolution:channel_base:channel_max, random-weight generators of the
official config-f layout):

* ``official``: what NVIDIA's ``projector.py`` does: the reference ops (no compiled kernels),
  fused modulated convolutions, one target at a time, no compilation, and the host reads of its
  per-step log line (``float(dist)``, ``float(loss)``) that synchronise a GPU at every step.
* ``recon``: recon's projector at each ``--batch``, ``--compile``, ``--ops`` and ``--precision``
  setting (``ref``: the pure-PyTorch reference ops everywhere; ``auto``: the CUDA kernels for
  large tensors as recon runs by default; the two are the same on CPU; precision modes as
  ``project.runtime.precision``, :mod:`recon.restore.precision`). ``official`` runs with torch's
  default math flags (which let cuDNN use TF32 on Ampere and later GPUs).

A step's time is the difference between a run of ``--steps`` + 1 steps and one of 1 step
(:func:`time_steps`: each run's fixed set-up and final-image costs, paid once per projection,
cancel). Every
(contender, round) runs in its own process (one that fails or outlives ``--timeout`` is
reported as failed, and the others go on), rounds alternate the contenders, and the table
gives medians over rounds: seconds per step, target-steps per second, peak memory, the time of
the first two (untimed) steps (compilation shows there), and the speed-up over ``official`` in
target-steps per second. The distance to the hardware's limit is two columns: the FLOPs of one
image-step (counted by ``torch.utils.flop_counter`` over a step of the same configuration run
eagerly: convolutions and matrix products, forward and backward) times the target-steps per
second, and the device's peak in that precision, measured as the rate of a large matrix product
(:func:`gemm_peak`). On CPU the time is the process's CPU time
(the machines are shared: wall time measures the neighbours); run it with ``OMP_NUM_THREADS=1``.
Without ``--vgg`` (and without weights/vgg16.pt) a random-weight VGG16 of the real architecture
and cost stands in.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

VGG_STAGES = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class _VGGStage(torch.nn.Module):
    """One stage of VGG16: an optional 2x max-pool, then 3x3 convolutions with ReLU."""

    def __init__(self, cin: int, couts: List[int], pool: bool, g: torch.Generator):
        super().__init__()
        self.pool = pool
        convs = []
        for cout in couts:
            c = torch.nn.Conv2d(cin, cout, 3, padding=1)
            with torch.no_grad():
                c.weight.copy_(torch.randn(c.weight.shape, generator=g) * (2 / (cin * 9)) ** 0.5)
                torch.nn.init.zeros_(c.bias)  # type: ignore[arg-type]   # a Conv2d made with bias
            convs.append(c)
            cin = cout
        self.convs = torch.nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            x = F.max_pool2d(x, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x


class RandomVGG16(torch.nn.Module):
    """VGG16 conv stack with LPIPS-style taps and random weights: the cost of vgg16.pt, not its
    values; TorchScript-able, with ``vgg16.pt``'s call signature (:func:`write_standin_vgg`)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        cins = [3] + [stage[-1] for stage in VGG_STAGES[:-1]]
        self.stages = torch.nn.ModuleList([_VGGStage(cin, stage, i > 0, g)
                                           for i, (cin, stage) in enumerate(zip(cins, VGG_STAGES))])

    def forward(self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False) -> torch.Tensor:
        x = img / 127.5 - 1
        feats: List[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            n = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)
            feats.append((n / float(x.shape[2] * x.shape[3]) ** 0.5).flatten(1))
        return torch.cat(feats, 1)


def write_standin_vgg(path, seed: int = 0) -> Path:
    """Save :class:`RandomVGG16` as a TorchScript file, as NVIDIA's ``vgg16.pt`` is one (what
    NVIDIA's own projector loads in the side-by-side bench)."""
    torch.jit.save(torch.jit.script(RandomVGG16(seed).eval().requires_grad_(False)), str(path))
    return Path(path)


def random_generator(res: int, channel_base: int, channel_max: int, device):
    """A random-weight generator of the official layout (``num_fp16_res`` 4, ``conv_clamp`` 256)."""
    from .model.networks import Generator
    torch.manual_seed(0)
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=res, img_channels=3,
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max,
                                        num_fp16_res=4, conv_clamp=256))
    return G.eval().requires_grad_(False).to(device)


def vgg_module(vgg_path, device):
    """``(vgg, name)``: NVIDIA's VGG16 from ``vgg_path``, or without one a random-weight stand-in."""
    from .model.perceptual import load_vgg16
    if vgg_path:
        return load_vgg16(vgg_path, device), Path(vgg_path).name
    return RandomVGG16().eval().requires_grad_(False).to(device), "random VGG16"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(device) -> float:
    """CPU: this process's CPU time (the neighbours' load does not count); CUDA: wall time."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def _peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    # ru_maxrss would include the forking parent's peak on Linux; VmHWM is this process's own.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def official_steps(G, features, targets: torch.Tensor, steps: int) -> None:
    """NVIDIA's projector loop for each target in turn (batch 1): fused modulated convolutions,
    the reference ops, the noise buffers optimized with Adam beside w, a w-noise draw per step,
    and its per-step log line's host reads."""
    from .restore.official import noise_regularization, w_stats

    w_avg, w_std = w_stats(G, 1000)
    for i in range(targets.shape[0]):
        target_features = features(targets[i:i + 1])
        w_opt = w_avg.clone().to(targets.device).requires_grad_(True)
        noise = {k: torch.randn(1, 1, r, r, device=targets.device).requires_grad_(True)
                 for k, r in G.synthesis.noise_layers().items()}
        opt = torch.optim.Adam([w_opt] + list(noise.values()), betas=(0.9, 0.999), lr=0.1)
        for step in range(steps):
            ws = (w_opt + torch.randn_like(w_opt) * w_std * 0.05).repeat([1, G.num_ws, 1])
            synth = G.synthesis(ws, noise_mode="const", noise_inputs=noise, fused_modconv=True)
            dist = (target_features - features(synth)).square().sum()
            loss = dist + noise_regularization(noise).sum() * 1e5
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            dist_, loss_ = float(dist.detach()), float(loss.detach())      # the log line's host reads
            _log_line = f"step {step + 1:>4d}/{steps}: dist {dist_:<4.2f} loss {loss_:<5.2f}"  # noqa: F841
            with torch.no_grad():
                for buf in noise.values():
                    buf -= buf.mean()
                    buf *= buf.square().mean().rsqrt()


OFFICIAL_SRC_ENV = "RECON_OFFICIAL_SRC"
OFFICIAL_FILES = ("projector.py", "legacy.py", "dnnlib/util.py", "training/networks.py", "torch_utils/ops/bias_act.py")


def official_source(path) -> Path:
    """A checkout of NVlabs/stylegan2-ada-pytorch (``--official-src`` or ``$RECON_OFFICIAL_SRC``),
    checked for the files the bench imports; :class:`ParamsError` naming what is missing."""
    from .errors import ParamsError
    src = Path(path).expanduser().resolve()
    missing = [f for f in OFFICIAL_FILES if not (src / f).is_file()]
    if missing:
        raise ParamsError(f"--official-src {src}: not a checkout of NVlabs/stylegan2-ada-pytorch "
                          f"(no {', '.join(missing)})")
    return src


class NvidiaProjector:
    """NVIDIA's own ``projector.project()``, imported from a checkout at run time (its licence
    keeps its code out of recon), on recon's generator's weights (its state_dict, whose names are
    NVIDIA's, loaded into NVIDIA's ``training.networks.Generator``) and the same VGG16 file (served
    to the projector's ``dnnlib.util.open_url``, which would download it). On a CPU the official
    generator is built with ``num_fp16_res=0``: NVIDIA's blocks would otherwise run in float16,
    which a CPU emulates at a fraction of float32's speed, and recon computes in float32 there."""

    def __init__(self, src, G, vgg_path, device):
        src = official_source(src)
        if str(src) not in sys.path:
            sys.path.insert(0, str(src))
        import dnnlib  # noqa: F401   (NVIDIA's, from the checkout)
        import projector
        from training import networks

        cfg = G.config
        synthesis = dict(cfg["synthesis_kwargs"], **({} if torch.device(device).type == "cuda" else
                                                    dict(num_fp16_res=0)))
        official = networks.Generator(z_dim=cfg["z_dim"], c_dim=cfg["c_dim"], w_dim=cfg["w_dim"],
                                      img_resolution=cfg["img_resolution"], img_channels=cfg["img_channels"],
                                      mapping_kwargs=cfg["mapping_kwargs"], synthesis_kwargs=synthesis)
        official.load_state_dict({k: v.detach().cpu() for k, v in G.state_dict().items()})
        self.G = official.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        data = Path(vgg_path).read_bytes()
        projector.dnnlib.util.open_url = lambda url, *args, **kwargs: io.BytesIO(data)
        self.project = projector.project

    def run(self, targets: torch.Tensor, steps: int, w_avg_samples: int, seed: Optional[int] = None,
            verbose: bool = False):
        """``project()`` for each target in turn (``[N, 3, R, R]`` in [-1, 1]; NVIDIA's takes one
        ``[3, R, R]`` in [0, 255]); returns the per-step w of each (``[steps, num_ws, w_dim]``).
        ``seed``: ``torch.manual_seed`` before each, so its draws are :class:`TorchRandom`'s."""
        import warnings

        out = []
        for target in targets:
            if seed is not None:
                torch.manual_seed(seed)
            with warnings.catch_warnings():     # its log line reads a tensor that requires grad
                warnings.simplefilter("ignore", UserWarning)
                out.append(self.project(self.G, (target + 1) * (255 / 2), num_steps=steps,
                                        w_avg_samples=w_avg_samples, device=self.device, verbose=verbose))
        return out


AGREE_STEPS = 5
AGREE_TOL = 0.011            # NVIDIA's projector prints its losses to 2 decimals


def agreement(src, res: int, channel_base: int, channel_max: int, vgg_path, device, steps: int = AGREE_STEPS,
              seed: int = 303) -> dict:
    """Do NVIDIA's projector and recon's (fp32, its official method) compute the same steps? Both
    restore one random target from the same weights, VGG16 file and random draws (recon's
    :class:`TorchRandom` draws what NVIDIA's takes from torch's global generator after
    ``manual_seed``) for ``steps`` steps. They agree when every loss NVIDIA's projector prints (2
    decimals) is recon's, rounded. The largest difference of the latents after each step is
    returned as information: Adam divides each element's gradient by its own magnitude, so the
    rounding by which recon's CPU convolution path (activations scaled, one convolution per batch)
    differs from NVIDIA's grouped one moves the elements whose gradients are near zero by up to a
    few thousandths in the first steps (at 32 px, 5e-6)."""
    import contextlib

    from .config import ProjectorConfig
    from .model.perceptual import load_vgg16
    from .restore import make_method
    from .restore.randomness import TorchRandom

    device = torch.device(device)
    G = random_generator(res, channel_base, channel_max, device)
    target = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    nvidia = NvidiaProjector(src, G, vgg_path, device)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        (w_nvidia,) = nvidia.run(target, steps, 1000, seed=seed, verbose=True)
    losses = [float(v) for v in re.findall(r"loss (\S+)", printed.getvalue())]
    method = make_method(G, load_vgg16(vgg_path, device), ProjectorConfig(num_steps=steps, w_avg_samples=1000,
                                                                          snapshot_every=0))
    (res_recon,) = method.restore(target, rngs=[TorchRandom(seed)], record=True)
    w_recon = torch.stack(res_recon.trajectory["W"]).expand_as(w_nvidia.cpu())
    w_diff = float((w_recon.cpu() - w_nvidia.cpu()).abs().max())
    scale = float(w_nvidia.abs().max())
    loss_diff = max((abs(a - round(h["loss"], 2)) for a, h in zip(losses, res_recon.history)), default=float("nan"))
    ok = len(losses) == steps and loss_diff <= AGREE_TOL
    return dict(res=res, steps=steps, w_max_diff=w_diff, w_max=scale, loss_max_diff=loss_diff,
                losses_nvidia=losses, losses_recon=[h["loss"] for h in res_recon.history], agree=ok)


def projection_run(method, targets):
    """``go(n)``: ``method`` restores ``targets`` for n steps (its other settings kept)."""
    from .restore import method_class

    cfg = method.cfg

    def go(n):
        method.cfg = method_class(cfg).budgeted(cfg, n)
        method.restore(targets)
    return go


def time_steps(go, steps: int, device) -> tuple:
    """``(warm-up seconds, seconds per step)`` of ``go(n)``, a run of n steps, by :func:`_clock`
    (process CPU time on CPU, wall time on CUDA). The warm-up is 2
    steps (compilation shows there). A run's fixed costs (its set-up, the final image, the copies
    to the host) cancel in the difference of a 1-step and a (steps + 1)-step run: what is left is
    the cost of a step, which is what a 1000-step projection pays. On CUDA the peak memory is
    reset before the long run."""
    device = torch.device(device)

    def timed(n):
        t0 = _clock(device)
        go(n)
        sync(device)
        return _clock(device) - t0

    warmup = timed(2)
    short = timed(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return warmup, (timed(steps + 1) - short) / steps


def step_flops(go) -> float:
    """FLOPs of one step of ``go(n)`` (a run of n steps, eager): the count of a 3-step run minus
    a 1-step run's, halved (each run's set-up and final image cancel)."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(n):
        with FlopCounterMode(display=False) as counter:
            go(n)
        return counter.get_total_flops()
    return (count(3) - count(1)) / 2


def gemm_peak(device, precision: str = "fp32") -> float:
    """The device's attainable FLOP/s in ``precision``: the best of 3 timed products of two
    square matrices (4096 on CUDA, 1024 on CPU) in that arithmetic."""
    device = torch.device(device)
    n = 4096 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        best = float("inf")
        for _ in range(4):
            sync(device)
            t0 = _clock(device)
            a @ a
            sync(device)
            best = min(best, _clock(device) - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return 2 * n ** 3 / best


def run_one(shape: str, batch, contender, compile_, ops, precision, steps, vgg, device, official_src=None) -> dict:
    """One contender's row: ``shape`` is ``resolution:channel_base:channel_max``."""
    from .config import ProjectorConfig
    from .model.perceptual import VGGFeatures
    from .restore import make_method

    res, channel_base, channel_max = (int(v) for v in shape.split(":"))
    device = torch.device(device)
    if contender in ("official", "nvidia") or ops == "ref":
        os.environ["RECON_NO_CUDA_OPS"] = "1"      # the reference ops
    G = random_generator(res, channel_base, channel_max, device)
    vgg_net, vgg_name = vgg_module(vgg, device)
    targets = torch.rand(batch, 3, res, res, device=device, generator=None) * 2 - 1
    cfg = ProjectorConfig(w_avg_samples=1000, snapshot_every=0)
    if contender == "nvidia":
        nvidia = NvidiaProjector(official_src, G, vgg, device)

        def go(n):
            nvidia.run(targets, n, 1000)
        eager = go
    elif contender == "official":
        features = VGGFeatures(vgg_net)

        def go(n):
            official_steps(G, features, targets, n)
        eager = go
    else:
        go = projection_run(make_method(G, vgg_net, cfg, compile=compile_ == "on", precision=precision), targets)
        eager = go if compile_ == "off" else projection_run(make_method(G, vgg_net, cfg, precision=precision),
                                                            targets[:1])
    warmup, per_step = time_steps(go, steps, device)
    flops = step_flops(eager) / (batch if eager is go else 1)       # per image-step
    return dict(device=str(device), res=res, batch=batch, contender=contender, compile=compile_, ops=ops,
                precision=precision, s_per_step=per_step, target_steps_per_s=batch / per_step, warmup_s=warmup,
                peak_mib=_peak_mib(device), vgg=vgg_name, threads=torch.get_num_threads(),
                gflop_per_image_step=flops / 1e9, achieved_tflops=flops * batch / per_step / 1e12,
                peak_tflops=gemm_peak(device, "fp32" if contender != "recon" else precision) / 1e12)


BASELINES = ("nvidia", "official")      # NVIDIA's own projector.py, or recon's re-implementation of its loop
CONTENDER_NAMES = {"nvidia": "NVIDIA projector.py", "official": "official-equivalent (recon's copy)"}


def _plain(doc: str) -> str:
    """The module's docstring as help text: reStructuredText's ``literals`` and :roles: unmarked."""
    text = re.sub(r":\w+:`([^`]+)`", r"\1", doc)
    return text.replace("``", "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recon.bench", description=_plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=["128:8192:256", "256:16384:512"],
                    help="resolution:channel_base:channel_max (config-f is 1024:32768:512)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off"])
    ap.add_argument("--ops", nargs="+", choices=("auto", "ref"), default=["auto"],
                    help="recon's ops: auto (the CUDA kernels for large tensors, where they build and verify) "
                         "or the pure-PyTorch reference")
    ap.add_argument("--precision", nargs="+", choices=("fp32", "tf32", "bf16"), default=["fp32"],
                    help="recon's arithmetic (project.runtime.precision)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the table gives medians")
    ap.add_argument("--vgg", default="", help="NVIDIA's vgg16.pt (default: the pipeline's, when download_weights "
                                              "has run; else a random-weight VGG16 of the same architecture)")
    ap.add_argument("--official-src", default=os.environ.get(OFFICIAL_SRC_ENV, ""),
                    help="a checkout of NVlabs/stylegan2-ada-pytorch: the baseline is then NVIDIA's own "
                         f"projector.project() (default ${OFFICIAL_SRC_ENV}; without one, recon's re-implementation "
                         "of its loop)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one configuration may take")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--agree", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one or args.agree:
        shape, *rest = (args.one or args.agree).split(",")
        res, cb, cm = (int(v) for v in shape.split(":"))
        if args.agree:
            print(json.dumps(agreement(args.official_src, res, cb, cm, args.vgg, args.device)))
        else:
            batch, contender, compile_, ops, precision = rest
            print(json.dumps(run_one(shape, int(batch), contender, compile_, ops, precision, args.steps, args.vgg,
                                     args.device, args.official_src)))
        return 0

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        if args.official_src:
            args.official_src = str(official_source(args.official_src))
        if not args.vgg and Path("weights/weights.json").is_file():
            from .model.weights import resolve_weights
            args.vgg = str(resolve_weights("weights").vgg16)
        if not args.vgg:            # one stand-in file for every contender, NVIDIA's projector included
            args.vgg = str(write_standin_vgg(Path(tmp) / STANDIN_VGG))
        return _rounds(args)


STANDIN_VGG = "random-vgg16-standin.pt"


def _subprocess(args, flag: str, value: str):
    """``(ok, json or reason, log)`` of one ``python -m recon.bench`` child."""
    cmd = [sys.executable, "-m", "recon.bench", flag, value, "--steps", str(args.steps), "--vgg", args.vgg,
           "--device", args.device, "--official-src", args.official_src]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=args.timeout)
    except subprocess.TimeoutExpired as exc:
        log = (exc.stderr or b"")[-3000:].decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")[-3000:]
        return False, f"ran past --timeout {args.timeout:g} s", log
    if out.returncode != 0:
        return False, (out.stderr.strip().splitlines() or ["?"])[-1][:200], out.stderr[-3000:]
    return True, json.loads(out.stdout.strip().splitlines()[-1]), out.stderr[-3000:]


def _rounds(args) -> int:
    baseline = "nvidia" if args.official_src else "official"
    agreements = {}
    if args.official_src:               # the two compute the same steps before they are timed
        for shape in args.shapes:
            ok, got, log = _subprocess(args, "--agree", shape)
            agreements[shape] = got if ok else dict(agree=False, error=got)
            if not ok:
                print(f"{log}\n  agreement {shape}: FAILED: {got}", file=sys.stderr)
    configs = []
    for shape in args.shapes:
        configs.append((shape, 1, baseline, "off", "ref", "fp32"))
        configs += [(shape, b, "recon", c, o, p) for b in args.batch for c in args.compile for o in args.ops
                    for p in args.precision]
    runs: Dict[tuple, List[dict]] = {c: [] for c in configs}
    failures = {}
    for r in range(args.repeats):
        for c in configs:                          # alternate the contenders within each round
            ok, got, log = _subprocess(args, "--one", ",".join(map(str, c)))
            if not ok:
                failures[c] = got
                print(f"{log}\n  round {r + 1}/{args.repeats} {c}: FAILED: {got}", file=sys.stderr)
                continue
            runs[c].append(got)
            print(f"  round {r + 1}/{args.repeats} {c}: {got['s_per_step']:.4f} s/step", file=sys.stderr)
            if args.json:       # kept current, so a bench stopped from outside leaves what it measured
                Path(args.json).write_text(json.dumps(dict(rows=list(_medians(runs).values()),
                                                           agreement=agreements, baseline=baseline), indent=1))
        _print_table(args, runs, failures, baseline, agreements)
    disagree = [s for s, a in agreements.items() if not a.get("agree")]
    return 1 if failures or disagree else 0


def _medians(runs: dict) -> dict:
    """``{config: row}`` with the medians of its rounds so far (configurations with none left out)."""
    rows = {}
    for c, rs in runs.items():
        if rs:
            row = dict(rs[0])
            for k in ("s_per_step", "target_steps_per_s", "peak_mib", "warmup_s", "achieved_tflops", "peak_tflops"):
                row[k] = statistics.median(r[k] for r in rs)
            row["rounds"] = len(rs)
            rows[c] = row
    return rows


def _print_table(args, runs: dict, failures: dict, baseline: str, agreements: dict) -> None:
    """Print the table of the rounds so far (medians), the baseline named, and whether NVIDIA's
    projector and recon's agreed on their first steps."""
    rows = _medians(runs)
    if not rows:
        print("\nprojector benchmark: every configuration failed", file=sys.stderr)
        return
    first = next(iter(rows.values()))
    clock = "wall time" if first["device"].startswith("cuda") else "process CPU time"
    vgg = "random-weight VGG16 stand-in" if first["vgg"] == STANDIN_VGG else first["vgg"]
    print(f"\nprojector benchmark: {first['device']}, {first['threads']} threads, VGG: {vgg}, "
          f"{args.steps} steps, medians of up to {args.repeats} rounds ({clock}); baseline: "
          + ("NVIDIA's own projector.project() from " + args.official_src if baseline == "nvidia" else
             "recon's re-implementation of NVIDIA's projector loop (give --official-src for NVIDIA's own code)"))
    for shape, a in agreements.items():
        if "error" in a:
            print(f"agreement at {shape}: could not be checked: {a['error']}")
        else:
            print(f"agreement at {shape}: NVIDIA's projector and recon's, same weights, VGG16 and draws, "
                  f"{a['steps']} steps: the losses NVIDIA's prints (2 decimals, ~{a['losses_recon'][0]:.3g}) within "
                  f"{a['loss_max_diff']:.3g} of recon's (tolerance {AGREE_TOL:g}): "
                  + ("agree" if a["agree"] else "DISAGREE") + f"; latents within {a['w_max_diff']:.2g} of |w| up to "
                  f"{a['w_max']:.3g} (Adam's per-element steps magnify the convolution paths' rounding)")
    print()
    head = ("| device | res | channel_base/max | batch | contender | compile | ops | precision | s/step "
            "| target-steps/s | peak MiB | first 2 steps s | GFLOP/image-step | TFLOP/s | GEMM peak TFLOP/s "
            f"| % of peak | vs {'NVIDIA' if baseline == 'nvidia' else 'official-equivalent'} |")
    print(head)
    print("|" + "|".join("---" for _ in head.split("|")[1:-1]) + "|")
    for c in runs:
        shape, batch, contender, compile_, ops, precision = c
        cb, cm = shape.split(":")[1:]
        row = rows.get(c)
        name = CONTENDER_NAMES.get(contender, contender)
        if row is None:
            print(f"| {args.device} | {shape.split(':')[0]} | {cb}/{cm} | {batch} | {name} | {compile_} | {ops} "
                  f"| {precision} | failed: {failures.get(c, '?')} |" + " |" * 8)
            continue
        base = rows.get((shape, 1, baseline, "off", "ref", "fp32"))
        speed = f"{row['target_steps_per_s'] / base['target_steps_per_s']:.2f}x" if base else "n/a"
        print(f"| {row['device']} | {row['res']} | {cb}/{cm} | {row['batch']} | {name} | "
              f"{row['compile']} | {ops} | {precision} | {row['s_per_step']:.4f} | {row['target_steps_per_s']:.2f} | "
              f"{row['peak_mib']:.0f} | {row['warmup_s']:.1f} | {row['gflop_per_image_step']:.1f} | "
              f"{row['achieved_tflops']:.3f} | {row['peak_tflops']:.3f} | "
              f"{100 * row['achieved_tflops'] / row['peak_tflops']:.0f} % | {speed} |", flush=True)


if __name__ == "__main__":
    from .runner import run
    sys.exit(run("python -m recon.bench", main))
