"""Precision modes (project.runtime.precision) and the quality gate that decides which of them may
be called equivalent to fp32: the golden official run in bf16, the gate over the benchmark's tasks
on the test generator with its stated tolerances, auto's choice and its cache, and the lines a
user sees."""
import json

import pytest
import torch
from safetensors.torch import load_file

from recon.config import ProjectorConfig, Runtime
from recon.data.imageio import from_uint8, to_uint8
from recon.metrics import psnr
from recon.pipeline import gate
from recon.restore import make_method
from recon.restore.official import OfficialMethod
from recon.restore.precision import candidates, cpu_has_bf16, forward, unavailable

# The bf16 tests run on every CPU: without AVX512-BF16 or AMX torch emulates bfloat16, with the same
# rounding (what these tests judge) at about a tenth of fp32's speed (what they do not judge).


def test_modes_and_where_they_run():
    assert unavailable("fp32", "cpu") is None and unavailable("bf16", "cpu") is None
    assert unavailable("tf32", "cpu") == "tf32 is a CUDA tensor-core mode"
    assert candidates("cpu") == (["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, tf32, bf16, got 'fp16'"):
        unavailable("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        Runtime(precision="fp16")
    with forward("bf16", "cpu"):
        assert torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1)).dtype == torch.bfloat16
    with forward("fp32", "cpu"):
        assert torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1)).dtype == torch.float32


def test_the_golden_official_run_in_bf16(golden_dir, G):
    """The official run replayed in bf16: different arithmetic (the latents move apart), the same
    outcome (final loss within the gate's 1 % of the recorded fp32 run's, PSNR to the target within
    0.1 dB of fp32's)."""
    from test_projector import standin_features

    from recon.restore.randomness import RecordedRandom

    P = load_file(str(golden_dir / "projector.safetensors"))
    prefix = "noise_init.synthesis."
    target = from_uint8(P["target_uint8"].permute(1, 2, 0).numpy())
    out = {}
    for mode in ("fp32", "bf16"):
        method = OfficialMethod(G, standin_features, ProjectorConfig(num_steps=30, snapshot_every=0))
        method.precision = mode
        rng = RecordedRandom({k[len(prefix):]: v for k, v in P.items() if k.startswith(prefix)}, P["w_noise_unit"])
        (out[mode],) = method.restore(target, rngs=[rng])
    golden_loss = float(P["loss"][-1])
    assert out["fp32"].history[-1]["loss"] == pytest.approx(golden_loss, rel=1e-5)       # fp32 is the exact path
    assert out["bf16"].history[-1]["loss"] == pytest.approx(golden_loss, rel=gate.TOLERANCE["loss"])
    assert (out["bf16"].latents["ws"] - out["fp32"].latents["ws"]).abs().max() > 1e-3   # it did run in bf16
    truth = P["target_uint8"].permute(1, 2, 0).numpy()
    p32, p16 = (psnr(to_uint8(out[m].image[None])[0], truth) for m in ("fp32", "bf16"))
    assert abs(p16 - p32) <= 0.1


@pytest.fixture(scope="module")
def lpips_only():
    """The tests' feature network with its LPIPS-like taps alone (no raw-pixel term)."""
    from tiny_vgg import TinyLPIPS
    return torch.jit.script(TinyLPIPS(0, pixel_weight=0.0).eval())


@pytest.fixture(scope="module")
def verdict(G, lpips_only):
    return gate.run_gate(G, lpips_only, modes=["fp32", "bf16"])


def test_bf16_passes_the_gate_on_the_benchmark_tasks(verdict):
    """The gate's own numbers with LPIPS-like features: in every task bf16 moves the images from
    fp32's less than fp32 moves them with other random draws, and ends within 1 % of its loss."""
    assert verdict["tasks"] == ["clean", "upsample-M", "inpaint_center-M", "blur-M"] and verdict["steps"] == 100
    ref, bf16 = verdict["modes"]["fp32"]["tasks"], verdict["modes"]["bf16"]["tasks"]
    chance = verdict["spread"]["tasks"]
    for task in verdict["tasks"]:
        assert bf16[task]["loss"] == pytest.approx(ref[task]["loss"], rel=0.01), task
        assert chance[task]["moved_db"] < bf16[task]["moved_db"] < gate.SAME_DB, task   # moved, less than chance
        assert ref[task]["moved_db"] == gate.SAME_DB
        assert bf16[task] != ref[task]                 # a different computation, not the same one twice
    assert verdict["modes"]["bf16"]["passed"] and verdict["modes"]["bf16"]["problems"] == []
    faster = min(("fp32", "bf16"), key=lambda m: verdict["modes"][m]["seconds_per_step"])
    assert verdict["choice"] == faster
    table = gate.verdict_table(verdict)
    assert "| bf16" in table and "passed" in table and "| fp32" in table and "reference" in table
    # beside it, how far fp32 moves with other random draws (the same faces and tasks)
    spread = verdict["spread"]["tasks"]
    assert set(spread) == set(ref) and all(spread[t] != ref[t] for t in ref)
    assert "| fp32, other random draws |" in table and "chance: what a mode must beat" in table


def test_the_gate_fails_bf16_where_the_loss_needs_more_bits(G, vgg):
    """The tests' small feature network weighs the raw pixels 30x: a bfloat16 image (8 bits of
    mantissa) moves that loss by more than 1 % in some of the gate's tasks (1.2 % to 13 % measured),
    although the images stay closer to fp32's than chance moves them; the gate fails bf16 on the
    loss, task by task, and auto keeps fp32."""
    v = gate.run_gate(G, vgg, modes=["fp32", "bf16"])
    assert not v["modes"]["bf16"]["passed"] and v["choice"] == "fp32"
    problems = v["modes"]["bf16"]["problems"]
    assert problems and all(p.split(": ")[0] in v["tasks"] and ": final loss " in p for p in problems)
    assert f"failed: {problems[0]}" in gate.verdict_table(v)


def test_a_mode_out_of_tolerance_fails_and_says_where(verdict):
    modes = verdict["modes"]
    spread = verdict["spread"]
    problems = gate.judge(modes["fp32"], modes["bf16"], spread, dict(loss=0.0))
    assert len(problems) == len(verdict["tasks"])
    assert all(p.startswith(f"{t}: final loss") and "> 0%" in p for p, t in zip(problems, verdict["tasks"]))
    assert gate.judge(modes["fp32"], modes["fp32"], spread, dict(loss=0.0)) == []
    # chance that moves the images less than bf16 does: bf16 fails every task on it, saying so
    luckier = {"tasks": {t: dict(r, moved_db=modes["bf16"]["tasks"][t]["moved_db"] + 0.5)
                         for t, r in spread["tasks"].items()}}
    problems = gate.judge(modes["fp32"], modes["bf16"], luckier)
    assert len(problems) == len(verdict["tasks"]) and all("no closer than fp32 with other random draws" in p
                                                          for p in problems)


def test_auto_runs_the_gate_once_and_follows_its_verdict(G, vgg, verdict, monkeypatch, tmp_path):
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gate, "candidates", lambda device: ["fp32", "bf16"])    # as on a CPU with native bf16
    calls = []

    def fake_gate(G, vgg, say=print):
        calls.append(1)
        return json.loads(json.dumps(failing))
    failing = json.loads(json.dumps(dict(verdict, choice="fp32")))
    bf16 = failing["modes"]["bf16"]
    bf16["tasks"]["blur-M"]["loss"] *= 1.5               # numbers that fail, as a cached verdict is re-judged
    bf16.update(passed=False, problems=["blur-M: final loss 1.5 vs 1.0"])
    monkeypatch.setattr(gate, "run_gate", fake_gate)
    said = []
    assert gate.resolve_precision("auto", G, vgg, say=said.append) == "fp32"
    assert gate.resolve_precision("auto", G, vgg, say=said.append) == "fp32"
    assert len(calls) == 1 and (tmp_path / "precision-gate.json").is_file()     # cached
    assert said[-1] == "precision auto: fp32 (no faster mode passed the quality gate)"
    # a mode asked for by name still runs, and says it failed the gate
    assert gate.resolve_precision("bf16", G, vgg, say=said.append) == "bf16"
    assert said[-1] == ("precision bf16: FAILED the quality gate on this device, results are not equivalent to "
                        "fp32's: blur-M: final loss 1.5 vs 1.0")
    # a verdict where bf16 passed: auto takes it
    (tmp_path / "precision-gate.json").write_text("{damaged")
    monkeypatch.setattr(gate, "run_gate", lambda G, vgg, say=print: json.loads(json.dumps(verdict)))
    assert gate.resolve_precision("auto", G, vgg, say=said.append) == verdict["choice"]
    with pytest.raises(ValueError, match="project.runtime.precision: tf32: tf32 is a CUDA tensor-core mode"):
        gate.resolve_precision("tf32", G, vgg)
    # a device with no faster mode: auto is fp32 without a gate
    monkeypatch.setattr(gate, "candidates", lambda device: ["fp32"])
    monkeypatch.setattr(gate, "run_gate", None)
    assert gate.resolve_precision("auto", G, vgg, say=said.append) == "fp32"
    assert said[-1] == "precision auto: fp32 (this device has no faster mode to check)"


def test_every_method_runs_in_bf16_close_to_fp32(G, vgg):
    """The robust method (and its tuning phase) under autocast: the loss stays float32 and ends
    within the gate's loss tolerance of the fp32 run's."""
    target = G.synthesis(G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)), None,
                                   truncation_psi=0.5), noise_mode="const")
    cfg = ProjectorConfig(method="robust", num_steps=30, snapshot_every=0, robust=dict(min_loss_res=8),
                          tune=dict(steps=4))
    final = {}
    for mode in ("fp32", "bf16"):
        (res,) = make_method(G, vgg, cfg, precision=mode).restore(target.detach())
        final[mode] = res.history
        assert all(isinstance(row["loss"], float) for row in res.history)
    phases = {row["phase"] for row in final["bf16"]}
    assert "tune" in phases
    for phase in phases:
        last = [r for r in final["fp32"] if r["phase"] == phase][-1]["loss"]
        got = [r for r in final["bf16"] if r["phase"] == phase][-1]["loss"]
        assert got == pytest.approx(last, rel=0.02), phase
