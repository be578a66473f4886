"""Compilation where it pays: the compiled step gives the eager step's results; a step that
cannot be compiled warns once and runs eagerly; batch size from measured memory; recon doctor."""
import json
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import make_weights

import recon
from recon.config import ProjectorConfig
from recon.model.perceptual import VGGFeatures, load_vgg16
from recon.model.weights import resolve_weights
from recon.pipeline.runtime import batch_for_memory
from recon.restore.compiled import CompiledOrEager, resolve_compile
from recon.restore.official import OfficialMethod


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, golden_dir):
    return make_weights(tmp_path_factory.mktemp("compiled"), golden_dir / "official_format.pkl")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: no CUDA device"))])
def test_compiled_step_equals_eager(tiny, device, no_tf32):
    """On CUDA the ops inside the compiled step are the reference ones (the compiler fuses them)."""
    files = resolve_weights(tiny)
    G = recon.load_generator(files.generator).to(device)
    features = VGGFeatures(load_vgg16(files.vgg16, device))
    cfg = ProjectorConfig(num_steps=4, w_avg_samples=200)
    targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eager = OfficialMethod(G, features, cfg).restore(targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)        # a compile fallback would fail the test
        compiled = OfficialMethod(G, features, cfg, compile=True).restore(targets)
    tol = 1e-5 if device == "cpu" else 1e-4    # GPU reductions fused in another order
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b.latents["ws"], a.latents["ws"], atol=tol, rtol=tol)
        torch.testing.assert_close(b.image, a.image, atol=tol, rtol=tol)
        for ha, hb in zip(a.history, b.history):
            assert hb["loss"] == pytest.approx(ha["loss"], rel=tol)


def test_a_step_that_does_not_compile_runs_eagerly(monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor: no C++ compiler found")
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    f = CompiledOrEager(lambda x: x * 2, "cpu")
    with pytest.warns(RuntimeWarning, match=r"could not compile the projection step \(RuntimeError: inductor: "
                                            r"no C\+\+ compiler found\); running it uncompiled"):
        assert f(torch.ones(2)).tolist() == [2.0, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(torch.ones(1)).tolist() == [2.0]          # warned once


def test_compile_settings():
    # auto: decided by the run on CPU; never on CUDA (measured); on and off as they say
    assert resolve_compile("auto", "cpu") == "auto"
    assert resolve_compile("auto", "cuda") is False and resolve_compile("auto", "cuda:1") is False
    assert resolve_compile("on", "cpu") is True and resolve_compile("on", "cuda") is True
    assert resolve_compile("off", "cpu") is False and resolve_compile("off", "cuda:1") is False
    from recon.config import parse_params
    from recon.errors import ParamsError
    with pytest.raises(ParamsError, match="project.runtime.compile: must be 'auto', 'on' or 'off', got 'yes'"):
        parse_params({"project": {"runtime": {"compile": "yes"}}})


def test_compile_auto_pays_from_the_planned_work_and_the_measured_step():
    from recon.restore.compiled import COLD_COMPILE_S, WARM_COMPILE_S, compile_pays, saving
    go, why = compile_pays(1000, 2.5, warm=False, resolution=256)     # 1000 steps at 256 px: 325 s saved > 150 s
    assert go and why == ("1000 steps planned at 2.5 s (eager, measured) would save about 325 s (13% at 256 px), more "
                          "than a first compilation costs (about 150 s): compiling")
    assert not compile_pays(20, 0.5, False, 128)[0]        # the quick profile's 20 steps: 1 s saved
    assert compile_pays(200, 0.5, True, 128)[0]            # 9 s saved > a warm cache's 5 s
    assert compile_pays(40, 17.0, False, 1024)[0]          # 40 steps at 1024 px: 306 s saved
    assert not compile_pays(int(COLD_COMPILE_S / 0.09), 1.0, False, 128)[0]
    assert compile_pays(int(WARM_COMPILE_S / 0.09) + 1, 1.0, True, 128)[0]
    # the measured shares, interpolated between the measured sizes and held beyond them
    assert [saving(r) for r in (32, 128, 256, 1024, 2048)] == [0.09, 0.09, 0.13, 0.45, 0.45]
    assert saving(512) == pytest.approx((0.13 + 0.45) / 2)


def test_compile_auto_times_its_first_steps_then_decides(monkeypatch, tmp_path):
    from recon.restore import compiled
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    made = []

    class Fake:
        def __init__(self, fn, device, what="the projection step"):
            self.fn, self.failed = fn, None
            made.append(self)

        def __call__(self, *a):
            return ("compiled", self.fn(*a))
    monkeypatch.setattr(compiled, "CompiledOrEager", Fake)
    t = iter(range(0, 100, 2))                             # every step takes 2 s
    said = []
    auto = compiled.AutoCompile(lambda x: x, "cpu", lambda: 1000, lambda x: "key1", 256, said.append,
                                clock=lambda: next(t))
    assert [auto(k) for k in range(3)] == [0, 1, 2] and not made          # the probe: eager
    assert auto(3) == ("compiled", 3) and len(made) == 1                   # 997 x 2 s x 13 % > 150 s
    assert said == ["compile auto: 997 steps planned at 2 s (eager, measured) would save about 259 s (13% at 256 "
                    "px), more than a first compilation costs (about 150 s): compiling"]
    assert compiled.is_warm("key1") and not compiled.is_warm("key2")
    short = compiled.AutoCompile(lambda x: x, "cpu", lambda: 20, lambda x: "key2", 256, said.append,
                                 clock=lambda: next(t))
    assert [short(k) for k in range(6)] == list(range(6)) and len(made) == 1    # 17 steps left: not worth it
    assert said[-1].endswith("not compiling")
    # the marks are recon's own file read back: damaged or hostile, it marks nothing and is rewritten
    marks = tmp_path / compiled.MARKS
    for hostile in ("[" * 100000, '["key1"]', '{"key1": "yes"}', "{"):
        marks.write_text(hostile)
        assert not compiled.is_warm("key1")
        compiled.mark_warm("key1")
        assert compiled.is_warm("key1") and json.loads(marks.read_text()) == {"key1": True}


@pytest.mark.slow
def test_compiled_bf16_step_equals_eager_bf16(tiny):
    """bf16 and compilation together: the compiled bf16 step ends where the eager bf16 one does
    (the gate's loss tolerance, 1 %; the restored images 35 dB apart or closer)."""
    from recon.metrics import psnr
    files = resolve_weights(tiny)
    G = recon.load_generator(files.generator)
    features = VGGFeatures(load_vgg16(files.vgg16))
    cfg = ProjectorConfig(num_steps=6, w_avg_samples=200)
    targets = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    runs = []
    for compile_ in (False, True):
        m = OfficialMethod(G, features, cfg, compile=compile_)
        m.precision = "bf16"
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            runs.append(m.restore(targets)[0])
    eager, compiled = runs
    assert compiled.history[-1]["loss"] == pytest.approx(eager.history[-1]["loss"], rel=0.01)
    from recon.data.imageio import to_uint8
    assert psnr(to_uint8(compiled.image[None])[0], to_uint8(eager.image[None])[0]) > 35


def test_batch_size_from_memory():
    GiB = 2 ** 30
    # 2 GiB per target, 1 GiB fixed, 80 GiB free: (0.8 * 80 - 1) / 2 = 31 -> capped at 16
    assert batch_for_memory(2 * GiB, GiB, 80 * GiB) == 16
    assert batch_for_memory(2 * GiB, GiB, 20 * GiB) == 7          # (16 - 1) / 2
    assert batch_for_memory(30 * GiB, GiB, 20 * GiB) == 1         # never below 1
    assert batch_for_memory(GiB, 0, 100 * GiB, cap=64) == 64


def test_doctor_reports_versions_ops_and_step_time(tiny):
    res = subprocess.run([sys.executable, "-m", "recon.cli", "doctor", "--weights", str(tiny), "--steps", "2",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"torch {torch.__version__}" in out and "device: cpu" in out
    assert "CUDA ops: not used on CPU" in out
    line = next(x for x in out.splitlines() if x.startswith("one projection step"))
    assert "weights.json (32 px generator)" in line and float(line.split(": ")[-1].split()[0]) > 0
