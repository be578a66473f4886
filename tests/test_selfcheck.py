"""The CUDA kernels' self-check, run on CPU with stand-in kernels written in PyTorch: a correct
kernel is accepted, a kernel with a small error is rejected (warned about by name and error) and
the reference is used instead; the verdict is cached per device and build."""
import json
import warnings

import pytest
import torch
from helpers import grad_from_output

from recon.model.ops import _plugin, selfcheck
from recon.model.ops.bias_act import bias_act_ref
from recon.model.ops.upfirdn2d import upfirdn2d, upfirdn2d_ref


class FakeKernels:
    """The extension's interface, computed by the references (plus an optional error)."""

    def __init__(self, upfirdn2d_error=0.0, bias_act_error=0.0):
        self.up_err, self.ba_err = upfirdn2d_error, bias_act_error

    def upfirdn2d(self, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip):
        y = upfirdn2d_ref(x, f, [upx, upy], [downx, downy], [px0, px1, py0, py1], flip, 1)
        return y + self.up_err * y.abs().max()

    def bias_act(self, x, b, dim, act, alpha, gain, clamp):
        name = {1: "linear", 2: "relu", 3: "lrelu"}[act]
        y = bias_act_ref(x, b if b.numel() else None, dim, name, alpha, gain, None if clamp < 0 else clamp)
        return y * (1 + self.ba_err)

    def bias_act_grad(self, dy, y, act, alpha, gain, clamp):
        return grad_from_output(dy, y, act, alpha, gain, clamp)


def test_correct_kernels_pass():
    v = selfcheck.verify(FakeKernels(), "cpu", dtypes=(torch.float32,))
    assert v["upfirdn2d"]["ok"] and v["bias_act"]["ok"], v
    assert v["upfirdn2d"]["error"] < 1e-5 and v["bias_act"]["error"] < 1e-5


@pytest.mark.parametrize("op", ["upfirdn2d", "bias_act"])
def test_a_wrong_kernel_is_rejected_and_the_reference_used(op, tmp_path, monkeypatch):
    bad = FakeKernels(**{f"{op}_error": 1e-3})
    with pytest.warns(RuntimeWarning, match=rf"CUDA {op} kernel failed its self-check on cpu \(max relative "
                                              r"error 0\.001\d* in float32, tolerance 0\.0001\)"):
        v = selfcheck.cached_verify(bad, "cpu", tmp_path / "selfcheck.json")
    other = "bias_act" if op == "upfirdn2d" else "upfirdn2d"
    assert not v[op]["ok"] and v[other]["ok"]
    # dispatch: the plugin is withheld from the failing op only
    monkeypatch.setattr(_plugin, "get", lambda: bad)
    monkeypatch.setitem(_plugin._state, "verdicts", {"cpu": v})
    assert _plugin.for_op(op, "cpu") is None and _plugin.for_op(other, "cpu") is bad
    x = torch.randn(1, 2, 8, 8)
    f = torch.ones(2, 2) / 4
    torch.testing.assert_close(upfirdn2d(x, f, up=2), upfirdn2d_ref(x, f, up=2))    # the reference's values


def test_a_crashing_kernel_is_rejected(tmp_path):
    class Crash(FakeKernels):
        def upfirdn2d(self, *a):
            raise RuntimeError("an illegal memory access was encountered")
    with pytest.warns(RuntimeWarning, match="upfirdn2d kernel failed its self-check on cpu "
                                            r"\(RuntimeError: an illegal memory access"):
        v = selfcheck.cached_verify(Crash(), "cpu", tmp_path / "v.json")
    assert not v["upfirdn2d"]["ok"] and v["bias_act"]["ok"]


def test_verdict_is_cached_per_build_and_device(tmp_path, monkeypatch):
    cache = tmp_path / "selfcheck.json"
    first = selfcheck.cached_verify(FakeKernels(), "cpu", cache)
    stored = json.loads(cache.read_text())
    assert list(stored.values()) == [first] and len(next(iter(stored))) == 20
    monkeypatch.setattr(selfcheck, "verify", lambda *a, **k: pytest.fail("verified again"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert selfcheck.cached_verify(FakeKernels(), "cpu", cache) == first
    # another build (a kernel source changed) is checked again
    monkeypatch.setattr(selfcheck, "cache_key", lambda device, build="": "other-build")
    with pytest.raises(pytest.fail.Exception, match="verified again"):
        selfcheck.cached_verify(FakeKernels(), "cpu", cache)


def test_fp16_tolerance_is_looser_but_still_catches_a_bad_kernel():
    good = selfcheck.check_op("upfirdn2d", FakeKernels(), "cpu", torch.float32)
    assert good < 1e-6
    assert selfcheck.check_op("bias_act", FakeKernels(bias_act_error=0.05), "cpu", torch.float32) > 0.04


@pytest.mark.parametrize("label, forge", [
    ("a forged pass", lambda v: {**v, "upfirdn2d": dict(v["upfirdn2d"], ok=True)}),
    ("an op missing", lambda v: {"bias_act": v["bias_act"]}),
    ("an entry as text", lambda v: {**v, "bias_act": "ok"}),
    ("nested deep", None),
])
def test_a_cached_verdict_that_does_not_follow_is_checked_again(tmp_path, label, forge):
    """The cache is recon's own file read back: a verdict whose ``ok`` does not follow from its error,
    one that lacks an op or is malformed, or a file nested past the parser, is not trusted."""
    cache = tmp_path / "selfcheck.json"
    bad = FakeKernels(upfirdn2d_error=1e-3)
    with pytest.warns(RuntimeWarning):
        honest = selfcheck.cached_verify(bad, "cpu", cache)
    key = next(iter(json.loads(cache.read_text())))
    cache.write_text("[" * 100000 if forge is None else json.dumps({key: forge(honest)}))
    with pytest.warns(RuntimeWarning, match="CUDA upfirdn2d kernel failed its self-check"):
        again = selfcheck.cached_verify(bad, "cpu", cache)
    assert not again["upfirdn2d"]["ok"] and again["bias_act"]["ok"]
    assert json.loads(cache.read_text())[key] == again
