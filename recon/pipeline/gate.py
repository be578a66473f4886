"""The precision quality gate: may a speed mode (tf32, bf16) be called equivalent to fp32 here?

On the generator and VGG16 a run uses, on its device, the official projector restores
:data:`GATE_SEEDS`' faces (the generator's own, so the truth is known) in every task of
:data:`GATE_TASKS` for :data:`GATE_STEPS` steps, once per precision mode, and once more in fp32
with other random draws (noise maps, w-noise): how far fp32 itself moves by chance. A mode
passes when, in every task,

* it moves the restored images from fp32's (same draws) *less than fp32 moves them under other
  random draws* (the mean over the faces of the PSNR between the two runs' images, in dB: higher
  is closer), and
* the mean final loss is within :data:`TOLERANCE` ``loss`` (relative) of fp32's.

A fixed tolerance on PSNR to the truth failed modes on problems that chance moves by more than the
tolerance (a random-weight generator does not reconstruct its own faces in 100 steps: 0.7 dB of
fp32's own spread against a 0.1 dB bar); judged against chance, the verdict is about the
arithmetic. PSNR and LPIPS to the truth stay in the table, as information.

``auto`` takes the fastest mode that passes (by the gate's own timing of each mode; fp32 always
qualifies). A verdict is cached per device, torch version, generator, VGG16 and gate settings in
recon's per-user cache (``precision-gate.json``) with its numbers; read back, it is re-judged from
them (a verdict that does not follow from its numbers, or an entry that is not a verdict, is
discarded with a line and the gate runs again). It costs (modes + 1) x (tasks) runs of
:data:`GATE_STEPS` steps at batch :data:`GATE_SEEDS`, once.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated, Callable, Dict, List, Literal, Optional, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
# What "equivalent to fp32" means, per task (means over the faces): the final loss within this of
# fp32's (relative), and the images moved from fp32's less than fp32's own other-draws run moves them.
TOLERANCE = dict(loss=0.01)
RULE = "chance-v1"            # the judging rule: part of the cache key, so an older rule's verdicts are redone
SAME_DB = 100.0               # the PSNR of identical images, as stored (JSON has no infinity)
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
    faces, and the restored images (``images``: task -> uint8 images, for :func:`moved`); the
    mode's seconds per step (process CPU time on CPU, wall time on CUDA). ``stream``: the seed of
    the restorations' random draws (noise maps, w-noise)."""
    device = next(G.parameters()).device
    R = G.img_resolution
    lpips = lpips or LPIPSMetric(vgg, str(device))
    truth = sample_faces(G, seeds, GATE_PSI)
    method = make_method(G, vgg, ProjectorConfig(num_steps=steps, snapshot_every=0), precision=mode)
    out: Dict[str, dict] = {}
    images: Dict[str, list] = {}
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
        images[task] = [to_uint8(r.image[None])[0] for r in restored]
        out[task] = dict(loss=float(np.mean([r.history[-1]["loss"] for r in restored])),
                         psnr=float(np.mean([psnr(i, t) for i, t in zip(images[task], truth)])),
                         lpips=float(np.mean([lpips(i, t) for i, t in zip(images[task], truth)])))
    return dict(tasks=out, seconds_per_step=seconds / (steps * len(tasks)), images=images)


def moved(reference: dict, other: dict) -> None:
    """Record in each of ``other``'s tasks how far its images are from ``reference``'s: the mean
    over the faces of the PSNR between them, dB (:data:`SAME_DB` for identical images)."""
    for task, imgs in other["images"].items():
        other["tasks"][task]["moved_db"] = float(np.mean([min(psnr(a, b), SAME_DB)
                                                          for a, b in zip(imgs, reference["images"][task])]))


def judge(reference: dict, candidate: dict, chance: dict, tolerance: Dict[str, float] = TOLERANCE) -> List[str]:
    """What keeps ``candidate`` (a :func:`measure` result with ``moved_db``) from equivalence with
    ``reference`` (fp32's), given ``chance`` (fp32 with other random draws, with ``moved_db``):
    one line per task and quantity that fails; empty when it passes."""
    problems = []
    for task, ref in reference["tasks"].items():
        got, luck = candidate["tasks"][task], chance["tasks"][task]
        loss = abs(got["loss"] / ref["loss"] - 1) if ref["loss"] else abs(got["loss"])
        if not loss <= tolerance["loss"]:
            problems.append(f"{task}: final loss {got['loss']:.4g} vs {ref['loss']:.4g} "
                            f"({loss:.2%} > {tolerance['loss']:.0%})")
        if not got["moved_db"] > luck["moved_db"]:
            problems.append(f"{task}: moved the images {got['moved_db']:.1f} dB from fp32's, no closer than fp32 "
                            f"with other random draws ({luck['moved_db']:.1f} dB)")
    return problems


def run_gate(G, vgg, modes: Optional[Sequence[str]] = None, steps: int = GATE_STEPS,
             tasks: Sequence[str] = GATE_TASKS, seeds: Sequence[int] = GATE_SEEDS,
             tolerance: Dict[str, float] = TOLERANCE, say: Callable[[str], None] = lambda s: None) -> dict:
    """The verdict on ``modes`` (default: every mode worth gating on G's device) against fp32:
    ``{"modes": {mode: {tasks, seconds_per_step, speedup, passed, problems}}, "choice": mode,
    "spread": {tasks, ...}}``; each task holds its loss, PSNR and LPIPS to the truth and
    ``moved_db``, the PSNR between its images and fp32's. ``spread`` is fp32 run again with other
    random draws: chance, which a mode must move the results less than (:func:`judge`)."""
    device = next(G.parameters()).device
    modes = list(modes or candidates(device))
    lpips = LPIPSMetric(vgg, str(device))
    results = {}
    for mode in ["fp32"] + [m for m in modes if m != "fp32"]:
        say(f"precision gate: {mode}, {len(tasks)} tasks x {steps} steps")
        results[mode] = measure(G, vgg, mode, tasks, seeds, steps, lpips)
    ref = results["fp32"]
    say(f"precision gate: fp32 with other random draws (chance), {len(tasks)} tasks x {steps} steps")
    spread = measure(G, vgg, "fp32", tasks, seeds, steps, lpips, stream=1)
    for r in [*results.values(), spread]:
        moved(ref, r)
    for mode, r in results.items():
        r["problems"] = judge(ref, r, spread, tolerance) if mode != "fp32" else []
        r["passed"] = not r["problems"]
        r["speedup"] = ref["seconds_per_step"] / r["seconds_per_step"]
    for r in [*results.values(), spread]:
        r.pop("images")
    choice = _fastest_passing(results)
    return dict(modes=results, choice=choice, spread=spread, steps=steps, tasks=list(tasks), seeds=list(seeds),
                tolerance=dict(tolerance), rule=RULE, device=device_name(device), torch=torch.__version__)


def _fastest_passing(results: dict) -> str:
    return min((m for m, r in results.items() if r["passed"]), key=lambda m: results[m]["seconds_per_step"])


def verdict_table(verdict: dict) -> str:
    """The verdict as a Markdown table: per mode its speed, how far it moved the images from
    fp32's against chance, its loss, the scores to the truth (information), whether it passed."""
    tol = verdict["tolerance"]
    lines = [f"precision gate on {verdict['device']} (torch {verdict['torch']}): {len(verdict['tasks'])} tasks x "
             f"{verdict['steps']} steps, faces {verdict['seeds']}; equivalent = in every task, the images closer to "
             f"fp32's than fp32 with other random draws comes, and the final loss within {tol['loss']:.0%}",
             "", "| mode | s/step | vs fp32 | least dB from fp32's images (chance) | max loss diff "
             "| max PSNR-to-truth diff dB | max LPIPS diff | verdict |", "|---|---|---|---|---|---|---|---|"]
    ref = verdict["modes"]["fp32"]["tasks"]
    rows = [(f"{m}{' (auto)' if m == verdict['choice'] else ''}", r,
             "reference" if m == "fp32" else "passed" if r["passed"] else f"failed: {r['problems'][0]}")
            for m, r in verdict["modes"].items()]
    rows.append(("fp32, other random draws", verdict["spread"], "chance: what a mode must beat"))
    chance = verdict["spread"]["tasks"]
    for label, r, word in rows:
        t = r["tasks"]
        loss = max(abs(t[k]["loss"] / ref[k]["loss"] - 1) for k in ref)
        dpsnr = max(abs(t[k]["psnr"] - ref[k]["psnr"]) for k in ref)
        dlpips = max(abs(t[k]["lpips"] - ref[k]["lpips"]) for k in ref)
        near = min(ref, key=lambda k: t[k]["moved_db"] - chance[k]["moved_db"])
        moved_text = (f"{t[near]['moved_db']:.1f} ({chance[near]['moved_db']:.1f}, {near})"
                      if t[near]["moved_db"] < SAME_DB else "identical")
        speed = f"{r['seconds_per_step']:.4f} | {r['speedup']:.2f}x" if "speedup" in r else " | "
        lines.append(f"| {label} | {speed} | {moved_text} | {loss:.3%} | {dpsnr:.3f} | {dlpips:.4f} | {word} |")
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


class _Scores(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    loss: Annotated[float, Field(allow_inf_nan=False)]
    psnr: Annotated[float, Field(allow_inf_nan=False)]
    lpips: Annotated[float, Field(allow_inf_nan=False)]
    moved_db: Annotated[float, Field(allow_inf_nan=False)]


class _ModeResult(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    tasks: Dict[str, _Scores]
    seconds_per_step: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    problems: List[str] = []
    passed: bool = True
    speedup: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0


class _Verdict(BaseModel):
    """A cached verdict, as :func:`run_gate` makes it."""
    model_config = ConfigDict(strict=True, extra="forbid")
    modes: Dict[Literal["fp32", "tf32", "bf16"], _ModeResult]
    choice: Literal["fp32", "tf32", "bf16"]
    spread: _ModeResult
    steps: int
    tasks: List[str]
    seeds: List[int]
    tolerance: Dict[str, float]
    rule: str
    device: str
    torch: str


def rejudged(entry) -> Optional[str]:
    """Why a cached verdict cannot be used (None: it can): not a verdict, or its verdicts and its
    choice do not follow from its own numbers under today's rule and tolerances."""
    try:
        v = _Verdict.model_validate(entry)
    except ValidationError as exc:
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc']) or 'the entry'}: {err['msg'][:120]}"
    if "fp32" not in v.modes or v.rule != RULE or v.tolerance != TOLERANCE or list(v.tasks) != list(GATE_TASKS):
        return "made under another rule or for other tasks"
    if any(set(r.tasks) != set(GATE_TASKS) for r in [*v.modes.values(), v.spread]):
        return "its tasks are not the gate's"
    data = v.model_dump()
    for mode, r in data["modes"].items():
        problems = judge(data["modes"]["fp32"], r, data["spread"]) if mode != "fp32" else []
        if r["passed"] != (not problems):
            return f"says {mode} {'passed' if r['passed'] else 'failed'}, but its numbers say otherwise"
    if v.choice != _fastest_passing(data["modes"]):
        return f"chose {v.choice}, which is not the fastest mode that passed"
    return None


def _cache(G, vgg, say: Callable[[str], None] = lambda s: None):
    """``(path, key, cache)``: the verdict cache and this device's and models' key in it; this key's
    entry is there only when it is a verdict that follows from its numbers (:func:`rejudged`;
    otherwise discarded, with a line)."""
    from recon.data.ownfiles import OwnFileError, read_json
    from recon.model.weights import cache_dir

    device = next(G.parameters()).device
    key = hashlib.sha256(json.dumps([device_name(device), torch.__version__, models_digest(G, vgg), GATE_STEPS,
                                     GATE_TASKS, GATE_SEEDS, TOLERANCE, RULE]).encode()).hexdigest()[:24]
    path = cache_dir() / CACHE_NAME
    try:
        cache = read_json(path)
    except FileNotFoundError:
        cache = {}
    except OwnFileError as exc:         # damaged: rewritten whole
        say(f"{exc}; the gate's cache is started afresh")
        cache = {}
    if not isinstance(cache, dict):
        say(f"{path}: not a table of verdicts; the gate's cache is started afresh")
        cache = {}
    if key in cache:
        problem = rejudged(cache[key])
        if problem:
            say(f"{path}: the verdict for this device and these weights is discarded ({problem}); the gate "
                "runs again")
            del cache[key]
    return path, key, cache


def cached_gate(G, vgg, say: Callable[[str], None] = lambda s: None) -> dict:
    """:func:`run_gate`'s verdict for these models on their device, from recon's per-user cache
    when it holds a valid one."""
    path, key, cache = _cache(G, vgg, say)
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
        from recon.config import params_key
        from recon.errors import ParamsError
        raise ParamsError(f"{params_key('project.runtime.precision')}: {setting}: {problem}")
    if setting != "fp32":
        _, key, cache = _cache(G, vgg, say)
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


__all__ = ["GATE_STEPS", "GATE_TASKS", "MODES", "TOLERANCE", "cached_gate", "judge", "measure", "rejudged",
           "resolve_precision", "run_gate"]
