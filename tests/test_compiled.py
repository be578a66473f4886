"""Compilation where it pays: the compiled step gives the eager step's results; a step that
cannot be compiled warns once and runs eagerly; batch size from measured memory; recon doctor."""
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
    # auto: CPU runs that repay a cold compilation (256+ px, 500+ steps); never CUDA (measured)
    assert resolve_compile("auto", "cpu", 1000, 1024) and resolve_compile("auto", "cpu", 500, 256)
    assert not resolve_compile("auto", "cpu", 499, 1024) and not resolve_compile("auto", "cpu", 1000, 128)
    assert not resolve_compile("auto", "cuda", 1000, 1024) and not resolve_compile("auto", "cuda:1", 10 ** 6, 1024)
    assert resolve_compile("on", "cpu", 1, 32) and resolve_compile("on", "cuda", 1, 32)
    assert not resolve_compile("off", "cpu", 10 ** 6, 1024) and not resolve_compile("off", "cuda:1", 1, 32)
    from recon.config import parse_params
    from recon.errors import ParamsError
    with pytest.raises(ParamsError, match="project.runtime.compile: must be 'auto', 'on' or 'off', got 'yes'"):
        parse_params({"project": {"runtime": {"compile": "yes"}}})


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
