"""The checks of ``recon verify``: this install against the repository's fixtures
(``tests/fixtures``, made by NVIDIA's and the robust method's reference code; their README says
how), on the chosen device. Each check returns a :class:`recon.verify.report.Check` with its
worst deviation, its tolerance and a verdict; an exception inside a check is that check's FAIL,
never the end of the run."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from .report import FAIL, INFO, PASS, SKIPPED, Check

ATOL = RTOL = 1e-4            # the fixtures' float32 tolerance (their READMEs)
TOL_TEXT = "|diff| <= 1e-4 + 1e-4 |reference|"
ALIGN_PSNR_DB = 45.0          # the alignment fixture's bar (a 0.5 px shift gives <= 42.6 dB)


@dataclass
class Context:
    """What every check gets: the fixtures folder, the device, the quick variant (the test
    suite's: fewer faces and steps), NVIDIA's checkout for the bench (or None) and the VGG16
    file to use where a perceptual network is needed (None: the random-weight stand-in)."""
    fixtures: Path
    device: str
    quick: bool = False
    official_src: Optional[str] = None
    vgg: Optional[Path] = None

    @property
    def tiny(self) -> Path:
        return self.fixtures / "stylegan2-tiny-a"

    def generator(self):
        import recon
        return recon.load_generator(self.tiny / "G_ema.safetensors", device=self.device)

    def tensors(self, name: Union[str, Path]) -> Dict[str, torch.Tensor]:
        """A fixture's arrays: ``name`` in the generator's folder, or a path."""
        from safetensors.torch import load_file
        return load_file(str(name if isinstance(name, Path) else self.tiny / name))


def deviation(pairs: Iterable[Tuple[torch.Tensor, torch.Tensor]], atol: float = ATOL,
              rtol: float = RTOL) -> Tuple[float, float, int]:
    """``(max |got - want|, the largest |got - want| / (atol + rtol |want|), how many arrays)``
    over the pairs, compared on the CPU in float64: the second is at most 1 when every element is
    within tolerance (infinite for a shape mismatch or a non-finite value)."""
    worst, ratio, n = 0.0, 0.0, 0
    for got, want in pairs:
        n += 1
        got, want = got.detach().cpu().double(), want.detach().cpu().double()
        if got.shape != want.shape or not bool(torch.isfinite(got).all()):
            return float("inf"), float("inf"), n
        if not got.numel():
            continue
        diff = (got - want).abs()
        worst = max(worst, float(diff.max()))
        ratio = max(ratio, float((diff / (atol + rtol * want.abs())).max()))
    return worst, ratio, n


def compared(check: Check, pairs, atol: float = ATOL, rtol: float = RTOL, what: str = "arrays") -> Check:
    worst, ratio, n = deviation(pairs, atol, rtol)
    ok = ratio <= 1
    check.figure = f"max |diff| {worst:.2g}, {ratio:.2g} of the tolerance at worst, over {n} {what}"
    check.tolerance = TOL_TEXT if (atol, rtol) == (ATOL, RTOL) else f"|diff| <= {atol:g} + {rtol:g} |reference|"
    check.verdict = PASS if ok else FAIL
    return check


@contextmanager
def exact(device: str):
    """IEEE float32 on the device (no TF32 on CUDA), as the fixtures were made."""
    from recon.restore.precision import numerics
    with numerics("fp32", device):
        yield


# ----------------------------------------------------------------------------------------------
# The generator and its ops

def generator_outputs(ctx: Context) -> Check:
    from recon.model.checkpoint import build_generator, read_generator

    check = Check("generator outputs", "the generator reproduces NVIDIA's official outputs (mapping, truncation, "
                  "synthesis fused and unfused, noise modes, batch of one, conv_clamp)")
    G, C = ctx.generator(), ctx.tensors("cases.safetensors")
    dev = {k: v.to(ctx.device) for k, v in C.items()}
    cfg, state = read_generator(ctx.tiny / "G_ema.safetensors", ctx.tiny / "config.json")
    cfg = json.loads(json.dumps(cfg))
    cfg["synthesis_kwargs"]["conv_clamp"] = 1.0
    clamped = build_generator(cfg, state).eval().to(ctx.device)
    with torch.no_grad(), exact(ctx.device):
        pairs = [(G.mapping(dev["z"], None, truncation_psi=1), C["ws_psi1"]),
                 (G.mapping(dev["z"], None, truncation_psi=0.7), C["ws_psi07"]),
                 (G.mapping(dev["z"], None, truncation_psi=0.7, truncation_cutoff=4), C["ws_psi07_cutoff"]),
                 (G.synthesis(dev["ws_psi1"], noise_mode="const"), C["img_synth_psi1_const"]),
                 (G.synthesis(dev["ws_psi1"], noise_mode="none"), C["img_synth_psi1_none"]),
                 (G.synthesis(dev["ws_mixed"], noise_mode="const"), C["img_synth_mixed_const"]),
                 (G.synthesis(dev["ws_mixed"], noise_mode="const", fused_modconv=False),
                  C["img_synth_mixed_const_unfused"]),
                 (G.synthesis(dev["ws_mixed"][:1], noise_mode="const"), C["img_synth_mixed0_const_b1"]),
                 (G(dev["z"], None, truncation_psi=0.5, noise_mode="const"), C["img_G_psi05_const"]),
                 (clamped.synthesis(dev["ws_mixed"], noise_mode="const"), C["img_synth_mixed_const_clampvariant"])]
    return compared(check, pairs)


def generator_gradients(ctx: Context) -> Check:
    check = Check("generator gradients", "its gradients with respect to the latents and the noise maps are "
                  "NVIDIA's")
    G, C = ctx.generator(), ctx.tensors("cases.safetensors")
    ws = C["ws_mixed"].to(ctx.device).requires_grad_(True)
    noise = G.synthesis.noise_buffers()
    for buf in noise.values():
        buf.requires_grad_(True)
    with exact(ctx.device):
        loss = (G.synthesis(ws, noise_mode="const") * C["grad_R"].to(ctx.device)).sum()
        loss.backward()
    pairs = [(loss, C["loss_mixed"]), (ws.grad, C["grad_ws_mixed"])]
    pairs += [(buf.grad, C[f"grad_noise.synthesis.{name}"]) for name, buf in noise.items()]
    return compared(check, pairs)


def ops_outputs(ctx: Context) -> Check:
    from recon.model.networks import normalize_2nd_moment
    from recon.model.ops import bias_act, modulated_conv2d, setup_filter, upfirdn2d
    from recon.model.ops.upfirdn2d import downsample2d, upsample2d

    g = {k: v.to(ctx.device) for k, v in ctx.tensors("ops.safetensors").items()}
    impls = ["ref", "cuda"] if ctx.device.startswith("cuda") else ["ref"]
    check = Check("ops", "upfirdn2d, bias_act, the modulated convolution and the resampling filters equal NVIDIA's "
                  f"({' and '.join(impls)} implementation{'s' * (len(impls) > 1)})")
    pairs = [(setup_filter([1, 3, 3, 1], device=torch.device(ctx.device)), g["filter_1331"]),
             (normalize_2nd_moment(g["norm2.x"]), g["norm2.y"])]
    f, x, b = g["filter_1331"], g["bias_act.x"], g["bias_act.b"]
    with exact(ctx.device):
        for impl in impls:
            pairs += [(upfirdn2d(g["upfirdn.x"], f, up=2, down=1, padding=[2, 1, 0, 3], impl=impl), g["upfirdn.y"]),
                      (upsample2d(g["resample.x"], f, impl=impl), g["resample.up2"]),
                      (downsample2d(g["resample.x"], f, impl=impl), g["resample.down2"]),
                      (bias_act(x, b, act="lrelu", impl=impl), g["bias_act.lrelu"]),
                      (bias_act(x, b, act="lrelu", clamp=0.8, impl=impl), g["bias_act.lrelu_clamp"]),
                      (bias_act(x, b, act="linear", clamp=0.8, impl=impl), g["bias_act.linear_clamp"])]
        for fused in (True, False):
            pairs += [(modulated_conv2d(g["modconv.x"], g["modconv.weight"], g["modconv.styles"], padding=1,
                                        flip_weight=True, fused_modconv=fused), g["modconv.up1"]),
                      (modulated_conv2d(g["modconv.x"], g["modconv.weight"], g["modconv.styles"], up=2, padding=1,
                                        resample_filter=f, flip_weight=False, fused_modconv=fused),
                       g["modconv.up2" if fused else "modconv.up2_unfused"]),
                      (modulated_conv2d(g["modconv.x"], g["modconv.weight_1x1"], g["modconv.styles"],
                                        demodulate=False, fused_modconv=fused), g["modconv.rgb"])]
    return compared(check, pairs)


def cuda_kernels(ctx: Context) -> Check:
    check = Check("CUDA kernels", "the compiled kernels equal their pure-PyTorch references (forward and input "
                  "gradient, float32 and float16, the generator's cases)")
    if not ctx.device.startswith("cuda"):
        check.verdict, check.detail = SKIPPED, "not a CUDA device (the reference ops run on the CPU)"
        return check
    from recon.model.ops import _plugin, selfcheck

    module = _plugin.get()
    if module is None:
        check.verdict, check.detail = FAIL, f"the extension did not build: {_plugin.status()['error']}"
        return check
    verdict = selfcheck.verify(module, torch.device(ctx.device))
    worst = max(v["error"] / selfcheck.TOLERANCE[getattr(torch, v["dtype"])] for v in verdict.values())
    check.figure = "; ".join(f"{op}: max relative error {v['error']:.2g} ({v['dtype']})" for op, v in verdict.items())
    check.tolerance = "relative 1e-4 in float32, 1e-2 in float16"
    check.verdict = PASS if all(v["ok"] for v in verdict.values()) and worst <= 1 else FAIL
    check.detail = "; ".join(f"{op}: {v['detail']}" for op, v in verdict.items() if v.get("detail"))
    return check


# ----------------------------------------------------------------------------------------------
# The methods' recorded runs

def projector_replay(ctx: Context) -> Check:
    from recon.config import ProjectorConfig
    from recon.data.imageio import from_uint8
    from recon.restore.official import OfficialMethod
    from recon.restore.randomness import RecordedRandom

    from .standins import projector_features

    check = Check("official projector replay", "the projector reproduces a recorded 30-step run of NVIDIA's "
                  "projector.project() step by step (loss, learning rate, w after every step, final noise maps)")
    P = ctx.tensors("projector.safetensors")
    G = ctx.generator()
    method = OfficialMethod(G, projector_features, ProjectorConfig(num_steps=30, snapshot_every=0))
    prefix = "noise_init.synthesis."
    rng = RecordedRandom({k[len(prefix):]: v for k, v in P.items() if k.startswith(prefix)}, P["w_noise_unit"])
    target = from_uint8(P["target_uint8"].permute(1, 2, 0).numpy()).to(ctx.device)
    with exact(ctx.device):
        (res,) = method.restore(target, rngs=[rng], record=True)
    loss = torch.tensor([h["loss"] for h in res.history])
    lr = torch.tensor([h["lr"] for h in res.history], dtype=torch.float64)
    pairs = [(method.w_avg, P["w_avg_proj"]), (torch.tensor(method.w_std), P["w_std_proj"]),
             (torch.stack(res.trajectory["W"]), P["w_out"]), (lr, P["lr"])]
    pairs += [(v, P[f"noise_final.synthesis.{k[len('noise/'):]}.noise_const"]) for k, v in res.latents.items()
              if k.startswith("noise/")]
    worst, ratio, n = deviation(pairs)
    loss_diff, loss_ratio, _ = deviation([(loss, P["loss"])], atol=1e-3)
    check.figure = (f"max |diff| {worst:.2g}, {ratio:.2g} of the tolerance at worst, over {n} arrays; loss max "
                    f"|diff| {loss_diff:.2g} (of ~{float(P['loss'][0]):.3g}), {loss_ratio:.2g} of its tolerance")
    check.tolerance = TOL_TEXT + "; loss 1e-3 + 1e-4 |reference|"
    check.verdict = PASS if ratio <= 1 and loss_ratio <= 1 and n == 11 else FAIL
    return check


def _robust(ctx: Context, degradation, name: str, claim: str) -> Check:
    from recon.config import ProjectorConfig, RobustConfig
    from recon.restore.robust import RobustMethod

    from .standins import robust_lpips

    check = Check(name, claim)
    R = ctx.tensors(ctx.fixtures / "robust-tiny-a" / "robust.safetensors")
    G = ctx.generator()
    cfg = ProjectorConfig(method="robust", num_steps=9, robust=RobustConfig(min_loss_res=2), snapshot_every=0)
    method = RobustMethod(G, robust_lpips, cfg)
    with exact(ctx.device):
        (res,) = method.restore(R["target"].to(ctx.device) * 2 - 1, degradation, record=True)
    K = G.synthesis.max_channels
    pairs = [(torch.tensor([h["loss"] for h in res.history]), R["loss"]),
             (torch.tensor([[h[f"term{k}"] for k in range(4)] for h in res.history]), R["loss_terms"]),
             (torch.stack(res.trajectory["W"])[:, None], R["w_steps"]),
             (torch.stack(res.trajectory["W+"])[:, None], R["wp_steps"]),
             (res.latents["wpp"][None], R["wpp_final"].reshape(1, G.num_ws, 512, -1)[:, :, :K]),
             ((res.phase_images["W"][None] + 1) / 2, R["pred_W"]),
             ((res.phase_images["W+"][None] + 1) / 2, R["pred_Wp"]),
             ((res.image[None] + 1) / 2, R["final_image"]),
             ((res.degraded[None] + 1) / 2, R["final_degraded"])]
    return compared(check, pairs)


def robust_replay(ctx: Context) -> Check:
    from .standins import Pool
    return _robust(ctx, Pool(), "robust method replay", "the robust method reproduces the reference code's recorded "
                   "W -> W+ -> W++ run (losses, terms, every phase's latents and images)")


def robust_replay_pipeline(ctx: Context) -> Check:
    from recon.config import DownsampleOp
    from recon.restore.degrade import Degradation
    return _robust(ctx, Degradation([DownsampleOp(factor=2, filter="bicubic")], 32),
                   "robust replay, pipeline's degradation", "the same run through the pipeline's own downsample "
                   "operation (the observation at 16 px, the loss's scales following it)")


# ----------------------------------------------------------------------------------------------
# FFHQ alignment

def _golden_faces(ctx: Context):
    golden = json.loads((ctx.fixtures / "align" / "landmarks.json").read_text())
    faces = [(name, f) for name, im in sorted(golden["images"].items()) for f in im["faces"]]
    return golden, faces


def alignment_math(ctx: Context) -> Check:
    from PIL import Image

    from recon.data.align import align_face, ffhq_quad
    from recon.data.imageio import load_photo
    from recon.metrics import psnr

    _, faces = _golden_faces(ctx)
    if ctx.quick:
        faces = [f for f in faces if f[1]["file"] in ("tiny_bryan_0.png", "group_meeting_1.png")]
    check = Check("FFHQ alignment", "fed the recorded landmarks, the alignment reproduces NVIDIA's FFHQ crops "
                  f"({len(faces)} faces{', a padded one included' if ctx.quick else ''})")
    worst_quad, worst_psnr, identical = 0.0, float("inf"), 0
    for name, f in faces:
        rgb, _ = load_photo(ctx.fixtures / "faces" / name)
        lm = np.array(f["landmarks"], dtype=np.float64)
        quad, _ = ffhq_quad(lm)
        worst_quad = max(worst_quad, float(np.abs(quad - np.array(f["quad"])).max()))
        face = align_face(rgb, lm).image
        gold = np.asarray(Image.open(ctx.fixtures / "align" / f["file"]).convert("RGB"))
        identical += bool(np.array_equal(face, gold))
        worst_psnr = min(worst_psnr, psnr(face, gold) if not np.array_equal(face, gold) else float("inf"))
    check.figure = (f"quads within {worst_quad:.2g} px; {identical} of {len(faces)} faces bit-identical"
                    + (f", the lowest PSNR {worst_psnr:.1f} dB" if identical < len(faces) else ""))
    check.tolerance = f"quad 1e-3 px; PSNR >= {ALIGN_PSNR_DB:g} dB"
    check.verdict = PASS if worst_quad <= 1e-3 and worst_psnr >= ALIGN_PSNR_DB else FAIL
    return check


def alignment_end_to_end(ctx: Context) -> Check:
    check = Check("FFHQ alignment, end to end", "detection and landmarks with dlib find the recorded faces, boxes and "
                  "integer landmarks on the photos")
    if ctx.quick:
        check.verdict, check.detail = SKIPPED, "the quick variant (the test suite runs it on its own)"
        return check
    try:
        from recon.data.align import detect_faces, landmarks68
    except ImportError as exc:
        check.verdict, check.detail = SKIPPED, f"dlib is not installed ({exc})"
        return check
    from recon.data.imageio import load_photo

    golden, _ = _golden_faces(ctx)
    mismatches, faces = [], 0
    for name, im in sorted(golden["images"].items()):
        rgb, _ = load_photo(ctx.fixtures / "faces" / name)
        dets = detect_faces(rgb, min_score=0.0)
        if [d.box for d in dets] != [f["box"] for f in im["faces"]]:
            mismatches.append(f"{name}: boxes differ")
            continue
        for d, f in zip(dets, im["faces"]):
            faces += 1
            if landmarks68(rgb, d.box).astype(int).tolist() != f["landmarks"]:
                mismatches.append(f"{name}: landmarks differ")
    check.figure = f"{faces} faces on {len(golden['images'])} photos; {len(mismatches)} differ"
    check.tolerance = "equal boxes and integer landmarks"
    check.verdict = PASS if not mismatches else FAIL
    check.detail = "; ".join(mismatches)
    return check


# ----------------------------------------------------------------------------------------------
# Precision and speed

def _feature_net(ctx: Context):
    """``(vgg module, name)``: NVIDIA's VGG16 when the pipeline's weights are here, else the
    random-weight stand-in of the same architecture."""
    from recon.bench import vgg_module
    return vgg_module(str(ctx.vgg) if ctx.vgg else "", torch.device(ctx.device))


def precision_gate(ctx: Context) -> Check:
    from recon.pipeline.gate import run_gate
    from recon.restore.precision import candidates

    check = Check("precision gate", "the speed modes of this device against fp32 on the fixtures' generator "
                  "(precision: auto takes the fastest that passes)")
    modes = candidates(torch.device(ctx.device))
    if modes == ["fp32"]:
        check.verdict = SKIPPED
        check.detail = "this device has no faster mode than fp32 (no native bfloat16 or TF32)"
        return check
    vgg, vgg_name = _feature_net(ctx)
    verdict = run_gate(ctx.generator(), vgg, modes=modes, steps=20 if ctx.quick else 100)
    check.rows = [["mode", "s/step", "vs fp32", "verdict"]] + [
        [m, f"{r['seconds_per_step']:.4f}", f"{r['speedup']:.2f}x",
         "reference" if m == "fp32" else "passed" if r["passed"] else "failed: " + r["problems"][0]]
        for m, r in verdict["modes"].items()]
    check.figure = ", ".join(f"{m} {'passed' if r['passed'] else 'failed'}" for m, r in verdict["modes"].items()
                             if m != "fp32") + f"; auto picks {verdict['choice']}"
    check.tolerance = f"the gate's own ({verdict['steps']} steps, {vgg_name})"
    check.verdict = INFO
    return check


def bench(ctx: Context) -> Check:
    from recon import bench as b
    from recon.config import ProjectorConfig
    from recon.model.perceptual import VGGFeatures
    from recon.restore import make_method

    shape = "32:512:64" if ctx.quick else "128:8192:256"
    res, cb, cm = (int(v) for v in shape.split(":"))
    steps, rounds = (2, 1) if ctx.quick else (3, 3)
    device = torch.device(ctx.device)
    G = b.random_generator(res, cb, cm, device)
    vgg, vgg_name = _feature_net(ctx)
    targets = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    recon_go = b.projection_run(make_method(G, vgg, ProjectorConfig(w_avg_samples=1000, snapshot_every=0)), targets)
    if ctx.official_src:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = ctx.vgg or b.write_standin_vgg(Path(tmp) / b.STANDIN_VGG)
            nvidia = b.NvidiaProjector(ctx.official_src, G, path, device)

            def base_go(n):
                nvidia.run(targets, n, 1000)
            base = "NVIDIA's projector.project()"
            times = _alternate({base: base_go, "recon": recon_go}, steps, device, rounds)
    else:
        features = VGGFeatures(vgg)

        def base_go(n):
            b.official_steps(G, features, targets, n)
        base = "official-equivalent (recon's copy of NVIDIA's loop)"
        times = _alternate({base: base_go, "recon": recon_go}, steps, device, rounds)
    ratio = times[base] / times["recon"]
    check = Check("projection speed", f"a short bench at {res} px, batch 1, fp32, {vgg_name} "
                  f"({'process CPU' if device.type == 'cpu' else 'wall'} time, medians of {rounds} alternating "
                  "rounds; python -m recon.bench for the full table)")
    check.rows = [["contender", "s/step", "vs baseline"], [base, f"{times[base]:.4f}", "1.00x"],
                  ["recon", f"{times['recon']:.4f}", f"{ratio:.2f}x"]]
    check.figure = f"recon {ratio:.2f}x {base}"
    check.tolerance = "(a measurement)"
    check.verdict = INFO
    return check


def _alternate(contenders: Dict[str, Callable[[int], None]], steps: int, device, rounds: int) -> Dict[str, float]:
    from recon.bench import time_steps
    seconds: Dict[str, List[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, go in contenders.items():
            seconds[name].append(time_steps(go, steps, device)[1])
    return {k: float(np.median(v)) for k, v in seconds.items()}


CHECKS: List[Callable[[Context], Check]] = [
    generator_outputs, generator_gradients, ops_outputs, cuda_kernels, projector_replay, robust_replay,
    robust_replay_pipeline, alignment_math, alignment_end_to_end, precision_gate, bench]


def run_checks(ctx: Context, say: Callable[[str], None] = print) -> List[Check]:
    """Every check in turn; one that raises is a FAIL with the error, and the others go on."""
    out = []
    for fn in CHECKS:
        t0 = time.perf_counter()
        try:
            check = fn(ctx)
        except Exception as exc:           # a crash is a failed check, reported with the rest
            check = Check(fn.__name__.replace("_", " "), "(the check raised an error)", verdict=FAIL,
                          detail=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        check.seconds = time.perf_counter() - t0
        say(f"  {check.name}: {check.verdict}" + (f" ({check.figure})" if check.figure else "")
            + (f": {check.detail}" if check.detail and check.verdict in (FAIL, SKIPPED) else ""))
        out.append(check)
    return out
