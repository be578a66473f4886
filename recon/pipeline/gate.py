"""The precision quality gate: may a speed mode (tf32, bf16) be called equivalent to fp32 here?

On the generator and VGG16 a run uses, on its device, the official projector restores
:data:`GATE_SEEDS`' faces (the generator's own, so the truth is known) in every task of
:data:`GATE_TASKS` for :data:`GATE_STEPS` steps, once per precision mode. A mode passes when, in
every task, the mean over the faces of

* the final loss is within :data:`TOLERANCE` ``loss`` (relative) of fp32's,
* the PSNR to the truth within ``psnr`` dB of fp32's,
* the LPIPS to the truth within ``lpips`` of fp32's.

``auto`` takes the fastest mode that passes (by the gate's own timing of each mode; fp32 always
qualifies). A verdict is cached per device, torch version, generator, VGG16 and gate settings in
recon's per-user cache (``precision-gate.json``); it costs (modes + 1) x (tasks) runs of
:data:`GATE_STEPS` steps at batch :data:`GATE_SEEDS`, once (the extra run is fp32 with other
random draws: how far fp32 itself moves by chance, shown beside the verdict).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from recon.config import ProjectorConfig
from recon.data.imageio import from_uint8, to_uint8, write_json
from recon.metrics import LPIPSMetric, psnr
from recon.restore import make_method
from recon.restore.degrade import Degradation
from recon.restore.precision import MODES, SETTINGS, candidates, unavailable
from recon.restore.randomness import TorchRandom

from .benchmark import Cell, task_degradation
from .synthetic import sample_faces

GATE_TASKS = ("clean", "upsample-M", "inpaint_center-M", "blur-M")
GATE_SEEDS = (0, 1)
GATE_STEPS = 100
GATE_PSI = 0.7
# What "equivalent to fp32" means: per task, means over the faces.
TOLERANCE = dict(loss=0.01, psnr=0.1, lpips=0.005)
CACHE_NAME = "precision-gate.json"


def _degradation(task: str, R: int, seeds: Sequence[int]) -> Optional[Degradation]:
    if task == "clean":
        return None
    name, _, level = task.rpartition("-")
    ds = [task_degradation(Cell(name, level), R, s, draw_seed=0) for s in seeds]
    masks = [d.masks for d in ds if d.masks is not None]
    return Degradation(ds[0].ops, R, masks=torch.cat(masks) if masks else None, seed=0)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def measure(G, vgg, mode: str, tasks: Sequence[str] = GATE_TASKS, seeds: Sequence[int] = GATE_SEEDS,
            steps: int = GATE_STEPS, lpips: Optional[Callable] = None, stream: int = 0) -> dict:
    """One mode's gate run: per task the mean final loss, PSNR and LPIPS (to the truth) over the
    faces, and the mode's seconds per step (process CPU time on CPU, wall time on CUDA).
    ``stream``: the seed of the restorations' random draws (noise maps, w-noise)."""
    device = next(G.parameters()).device
    R = G.img_resolution
    lpips = lpips or LPIPSMetric(vgg, str(device))
    truth = sample_faces(G, seeds, GATE_PSI)
    method = make_method(G, vgg, ProjectorConfig(num_steps=steps, snapshot_every=0), precision=mode)
    out: Dict[str, dict] = {}
    seconds = 0.0
    for task in tasks:
        d = _degradation(task, R, seeds)
        clean = from_uint8(truth).to(device)
        targets = d.target(clean) if d is not None else clean
        targets = from_uint8(to_uint8(targets))          # as the 8-bit files a user has hold them
        t0 = _clock(device)
        restored = method.restore(targets, d, names=[f"seed{s}" for s in seeds],
                                  rngs=[TorchRandom(stream) for _ in seeds])
        seconds += _clock(device) - t0
        images = [to_uint8(r.image[None])[0] for r in restored]
        out[task] = dict(loss=float(np.mean([r.history[-1]["loss"] for r in restored])),
                         psnr=float(np.mean([psnr(i, t) for i, t in zip(images, truth)])),
                         lpips=float(np.mean([lpips(i, t) for i, t in zip(images, truth)])))
    return dict(tasks=out, seconds_per_step=seconds / (steps * len(tasks)))


def judge(reference: dict, candidate: dict, tolerance: Dict[str, float] = TOLERANCE) -> List[str]:
    """What keeps ``candidate`` (a :func:`measure` result) from equivalence with ``reference``
    (fp32's): one line per task and quantity out of tolerance; empty when it passes."""
    problems = []
    for task, ref in reference["tasks"].items():
        got = candidate["tasks"][task]
        loss = abs(got["loss"] / ref["loss"] - 1) if ref["loss"] else abs(got["loss"])
        if not loss <= tolerance["loss"]:
            problems.append(f"{task}: final loss {got['loss']:.4g} vs {ref['loss']:.4g} "
                            f"({loss:.2%} > {tolerance['loss']:.0%})")
        for k, unit in (("psnr", " dB"), ("lpips", "")):
            if not abs(got[k] - ref[k]) <= tolerance[k]:
                problems.append(f"{task}: {k.upper()} {got[k]:.4f} vs {ref[k]:.4f}{unit} "
                                f"(off by more than {tolerance[k]:g}{unit})")
    return problems


def run_gate(G, vgg, modes: Optional[Sequence[str]] = None, steps: int = GATE_STEPS,
             tasks: Sequence[str] = GATE_TASKS, seeds: Sequence[int] = GATE_SEEDS,
             tolerance: Dict[str, float] = TOLERANCE, say: Callable[[str], None] = lambda s: None) -> dict:
    """The verdict on ``modes`` (default: every mode worth gating on G's device) against fp32:
    ``{"modes": {mode: {tasks, seconds_per_step, speedup, passed, problems}}, "choice": mode,
    "spread": {tasks, ...}}``. ``spread`` is fp32 run again with other random draws: how far
    fp32 moves by chance, shown beside the verdict (a problem as ill-posed as the generator makes
    it moves more than any tolerance); the verdict itself uses the fixed tolerances."""
    device = next(G.parameters()).device
    modes = list(modes or candidates(device))
    lpips = LPIPSMetric(vgg, str(device))
    results = {}
    for mode in ["fp32"] + [m for m in modes if m != "fp32"]:
        say(f"precision gate: {mode}, {len(tasks)} tasks x {steps} steps")
        results[mode] = measure(G, vgg, mode, tasks, seeds, steps, lpips)
    ref = results["fp32"]
    say(f"precision gate: fp32 with other random draws (its own spread), {len(tasks)} tasks x {steps} steps")
    spread = measure(G, vgg, "fp32", tasks, seeds, steps, lpips, stream=1)
    spread["problems"] = judge(ref, spread, tolerance)
    for mode, r in results.items():
        r["problems"] = judge(ref, r, tolerance) if mode != "fp32" else []
        r["passed"] = not r["problems"]
        r["speedup"] = ref["seconds_per_step"] / r["seconds_per_step"]
    choice = min((m for m, r in results.items() if r["passed"]), key=lambda m: results[m]["seconds_per_step"])
    return dict(modes=results, choice=choice, spread=spread, steps=steps, tasks=list(tasks), seeds=list(seeds),
                tolerance=dict(tolerance), device=device_name(device), torch=torch.__version__)


def verdict_table(verdict: dict) -> str:
    """The verdict as a Markdown table: per mode its speed, whether it passed, and its worst task."""
    tol = verdict["tolerance"]
    lines = [f"precision gate on {verdict['device']} (torch {verdict['torch']}): {len(verdict['tasks'])} tasks x "
             f"{verdict['steps']} steps, faces {verdict['seeds']}; equivalent = final loss within {tol['loss']:.0%}, "
             f"PSNR within {tol['psnr']:g} dB, LPIPS within {tol['lpips']:g} of fp32's in every task",
             "", "| mode | s/step | vs fp32 | max loss diff | max PSNR diff dB | max LPIPS diff | verdict |",
             "|---|---|---|---|---|---|---|"]
    ref = verdict["modes"]["fp32"]["tasks"]
    rows = [(f"{m}{' (auto)' if m == verdict['choice'] else ''}", r,
             "reference" if m == "fp32" else "passed" if r["passed"] else f"failed: {r['problems'][0]}")
            for m, r in verdict["modes"].items()]
    rows.append(("fp32, other random draws", verdict["spread"], "fp32's own spread (not a verdict)"))
    for label, r, word in rows:
        t = r["tasks"]
        loss = max(abs(t[k]["loss"] / ref[k]["loss"] - 1) for k in ref)
        dpsnr = max(abs(t[k]["psnr"] - ref[k]["psnr"]) for k in ref)
        dlpips = max(abs(t[k]["lpips"] - ref[k]["lpips"]) for k in ref)
        speed = f"{r['seconds_per_step']:.4f} | {r['speedup']:.2f}x" if "speedup" in r else " | "
        lines.append(f"| {label} | {speed} | {loss:.3%} | {dpsnr:.3f} | {dlpips:.4f} | {word} |")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu{' (bf16)' if 'bf16' in candidates(device) else ''}"


def models_digest(*modules) -> str:
    """A digest of the modules' parameters and buffers (what the verdict is about)."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _cache(G, vgg):
    """``(path, key, cache)``: the verdict cache and this device's and models' key in it."""
    from recon.model.weights import cache_dir

    device = next(G.parameters()).device
    key = hashlib.sha256(json.dumps([device_name(device), torch.__version__, models_digest(G, vgg), GATE_STEPS,
                                     GATE_TASKS, GATE_SEEDS, TOLERANCE]).encode()).hexdigest()[:24]
    path = cache_dir() / CACHE_NAME
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):       # none yet, or damaged: rewritten whole
        cache = {}
    return path, key, cache if isinstance(cache, dict) else {}


def cached_gate(G, vgg, say: Callable[[str], None] = lambda s: None) -> dict:
    """:func:`run_gate`'s verdict for these models on their device, from recon's per-user cache
    when it holds one."""
    path, key, cache = _cache(G, vgg)
    if key not in cache:
        say(f"precision auto: checking the speed modes against fp32 on {device_name(next(G.parameters()).device)} "
            f"(once per device and weights; cached in {path})")
        cache[key] = run_gate(G, vgg, say=say)
        write_json(path, cache)
    return cache[key]


def resolve_precision(setting: str, G, vgg, say: Callable[[str], None] = lambda s: None) -> str:
    """The mode a run uses for ``project.runtime.precision: setting``: ``auto`` the fastest that
    passes the gate (running it once per device and weights); a mode by name as given, with a
    line when it is not known to be equivalent to fp32."""
    if setting not in SETTINGS:
        raise ValueError(f"precision must be one of {', '.join(SETTINGS)}, got {setting!r}")
    device = next(G.parameters()).device
    if setting == "auto":
        if candidates(device) == ["fp32"]:
            say("precision auto: fp32 (this device has no faster mode to check)")
            return "fp32"
        verdict = cached_gate(G, vgg, say=say)
        choice = verdict["choice"]
        r = verdict["modes"][choice]
        say(f"precision auto: {choice}" + (f" (passed the quality gate, {r['speedup']:.2f}x fp32's speed)"
                                           if choice != "fp32" else " (no faster mode passed the quality gate)"))
        return choice
    problem = unavailable(setting, device)
    if problem:
        raise ValueError(f"project.runtime.precision: {setting}: {problem}")
    if setting != "fp32":
        _, key, cache = _cache(G, vgg)
        verdict = cache.get(key, {}).get("modes", {}).get(setting)
        if verdict is None:
            say(f"precision {setting}: a speed mode, not yet checked against fp32 on this device "
                "(precision: auto checks it, and uses it only if it passes the quality gate)")
        elif verdict["passed"]:
            say(f"precision {setting}: passed the quality gate on this device")
        else:
            say(f"precision {setting}: FAILED the quality gate on this device, results are not equivalent to "
                f"fp32's: {verdict['problems'][0]}")
    return setting


__all__ = ["GATE_STEPS", "GATE_TASKS", "MODES", "TOLERANCE", "cached_gate", "judge", "measure", "resolve_precision",
           "run_gate"]
