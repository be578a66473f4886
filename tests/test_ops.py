"""Custom ops: golden single-op checks, the CUDA path's gradient formulas checked on CPU,
CUDA-vs-reference agreement (needs a GPU), and a compile-only check of the CUDA sources (needs nvcc)."""
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import grad_from_output

from recon.model.networks import normalize_2nd_moment
from recon.model.ops import bias_act, modulated_conv2d, setup_filter, upfirdn2d
from recon.model.ops._plugin import CUDA_DIR
from recon.model.ops.bias_act import ACTIVATIONS, bias_act_ref
from recon.model.ops.upfirdn2d import backward_params, downsample2d, upfirdn2d_ref, upsample2d

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def golden_ops(golden_dir):
    from safetensors.torch import load_file
    return load_file(str(golden_dir / "ops.safetensors"))


def test_setup_filter(golden_ops):
    torch.testing.assert_close(setup_filter([1, 3, 3, 1]), golden_ops["filter_1331"], atol=0, rtol=0)


def test_upfirdn2d_golden(golden_ops):
    y = upfirdn2d(golden_ops["upfirdn.x"], golden_ops["filter_1331"], up=2, down=1, padding=[2, 1, 0, 3])
    torch.testing.assert_close(y, golden_ops["upfirdn.y"], **TOL)


def test_resample_golden(golden_ops):
    f, x = golden_ops["filter_1331"], golden_ops["resample.x"]
    torch.testing.assert_close(upsample2d(x, f), golden_ops["resample.up2"], **TOL)
    torch.testing.assert_close(downsample2d(x, f), golden_ops["resample.down2"], **TOL)


def test_bias_act_golden(golden_ops):
    x, b = golden_ops["bias_act.x"], golden_ops["bias_act.b"]
    torch.testing.assert_close(bias_act(x, b, act="lrelu"), golden_ops["bias_act.lrelu"], **TOL)
    torch.testing.assert_close(bias_act(x, b, act="lrelu", clamp=0.8), golden_ops["bias_act.lrelu_clamp"], **TOL)
    torch.testing.assert_close(bias_act(x, b, act="linear", clamp=0.8), golden_ops["bias_act.linear_clamp"], **TOL)


def test_normalize_2nd_moment_golden(golden_ops):
    torch.testing.assert_close(normalize_2nd_moment(golden_ops["norm2.x"]), golden_ops["norm2.y"], **TOL)


@pytest.mark.parametrize("fused", [True, False])
def test_modulated_conv_golden(golden_ops, fused):
    g = golden_ops
    up1 = modulated_conv2d(g["modconv.x"], g["modconv.weight"], g["modconv.styles"], padding=1,
                           flip_weight=True, fused_modconv=fused)
    torch.testing.assert_close(up1, g["modconv.up1"], **TOL)
    up2 = modulated_conv2d(g["modconv.x"], g["modconv.weight"], g["modconv.styles"], up=2, padding=1,
                           resample_filter=g["filter_1331"], flip_weight=False, fused_modconv=fused)
    torch.testing.assert_close(up2, g["modconv.up2" if fused else "modconv.up2_unfused"], **TOL)
    rgb = modulated_conv2d(g["modconv.x"], g["modconv.weight_1x1"], g["modconv.styles"], demodulate=False,
                           fused_modconv=fused)
    torch.testing.assert_close(rgb, g["modconv.rgb"], **TOL)


@pytest.mark.parametrize("up,down,pad,flip", [
    ((1, 1), (1, 1), (1, 2, 0, 3), False),
    ((2, 2), (1, 1), (2, 1, 2, 1), False),
    ((1, 1), (2, 2), (1, 1, 1, 1), True),
    ((2, 3), (3, 2), (3, -1, 0, 2), False),
    ((3, 1), (1, 2), (-2, 4, 1, -1), True),
])
def test_upfirdn2d_backward_formula(up, down, pad, flip):
    """The CUDA path's backward is an upfirdn2d with transformed parameters: check it against
    autograd of the reference, with the reference standing in for the kernel."""
    torch.manual_seed(0)
    f = torch.rand(4, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    y = upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=1.7)
    dy = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, dy)
    bup, bdown, bpad = backward_params(x.shape[2:], y.shape[2:], (f.shape[1], f.shape[0]), up, down, pad)
    got = upfirdn2d_ref(dy, f, up=bup, down=bdown, padding=bpad, flip_filter=not flip, gain=1.7)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("act", ["linear", "relu", "lrelu"])
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_bias_act_gradient_formula(act, clamp):
    """The CUDA gradient kernel computes dx from y; its formula, in PyTorch, matches autograd."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64)
    y = bias_act_ref(x, b, act=act, clamp=clamp)
    dy = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, dy)
    spec = ACTIVATIONS[act]
    got = grad_from_output(dy, y.detach(), spec.cuda_code, spec.def_alpha, spec.def_gain,
                           -1.0 if clamp is None else clamp)
    torch.testing.assert_close(got, expected)


def test_upfirdn2d_separable_equals_2d():
    x = torch.randn(1, 2, 9, 8)
    f1 = torch.tensor([1.0, 2, 4, 5, 5, 4, 2, 1])
    sep = setup_filter(f1, separable=True)
    full = setup_filter(f1, separable=False)
    torch.testing.assert_close(upfirdn2d(x, sep, up=2, padding=4), upfirdn2d(x, full, up=2, padding=4),
                               atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# CUDA path (runs only where a GPU is present; the device tool lends one to some tasks)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no CUDA device")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act,clamp", [("linear", None), ("lrelu", None), ("lrelu", 256.0), ("relu", 0.5)])
def test_bias_act_cuda_matches_ref(dtype, act, clamp):
    torch.manual_seed(0)
    x = torch.randn(4, 16, 9, 7, device="cuda", dtype=dtype, requires_grad=True)
    b = torch.randn(16, device="cuda", dtype=dtype, requires_grad=True)
    y_ref = bias_act(x, b, act=act, clamp=clamp, impl="ref")
    y_cuda = bias_act(x, b, act=act, clamp=clamp, impl="cuda")
    torch.testing.assert_close(y_cuda, y_ref)
    dy = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, [x, b], dy)
    g_cuda = torch.autograd.grad(y_cuda, [x, b], dy)
    for a, r in zip(g_cuda, g_ref):
        torch.testing.assert_close(a, r)


@cuda
@pytest.mark.parametrize("up,down,pad,flip", [(1, 1, (1, 2, 0, 3), False), (2, 1, (2, 1, 2, 1), False),
                                              (1, 2, (1, 1, 1, 1), True), ((2, 3), (3, 2), (3, -1, 0, 2), False)])
def test_upfirdn2d_cuda_matches_ref(up, down, pad, flip):
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1], device="cuda")
    x = torch.randn(3, 5, 11, 10, device="cuda", requires_grad=True)
    y_ref = upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=2.0, impl="ref")
    y_cuda = upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=2.0, impl="cuda")
    torch.testing.assert_close(y_cuda, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y_ref)
    torch.testing.assert_close(torch.autograd.grad(y_cuda, x, dy)[0], torch.autograd.grad(y_ref, x, dy)[0],
                               atol=1e-5, rtol=1e-5)


@cuda
def test_generator_cuda_matches_golden(golden_G, golden_cases, no_tf32):
    G = golden_G.to("cuda")
    try:
        img = G.synthesis(golden_cases["ws_mixed"].cuda(), noise_mode="const")
        torch.testing.assert_close(img.cpu(), golden_cases["img_synth_mixed_const"], **TOL)
    finally:
        golden_G.to("cpu")


# ---------------------------------------------------------------------------------------------
# Compile-only check of the kernels (nvcc is installed even without a GPU)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs CUDA: nvcc (the CUDA toolkit) is not installed")
@pytest.mark.parametrize("source", sorted(p.name for p in CUDA_DIR.glob("*.cu")))
def test_cuda_kernels_compile(source, tmp_path):
    include = Path(torch.__file__).resolve().parent / "include"
    cmd = ["nvcc", "-c", "-std=c++17", "-arch=sm_90", f"-I{include}", str(CUDA_DIR / source),
           "-o", str(tmp_path / (source + ".o"))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / (source + ".o")).stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# The autograd glue of the CUDA path, run on CPU with the kernels replaced by reference code that
# follows the extension's exact call signatures.

class ReferenceKernels:
    calls = 0

    def upfirdn2d(self, x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip):
        self.calls += 1
        return upfirdn2d_ref(x, f, up=(upx, upy), down=(downx, downy), padding=(px0, px1, py0, py1),
                             flip_filter=flip)

    def bias_act(self, x, b, dim, act_code, alpha, gain, clamp):
        self.calls += 1
        act = {1: "linear", 2: "relu", 3: "lrelu"}[act_code]
        return bias_act_ref(x, b if b.numel() else None, dim, act, alpha, gain, None if clamp < 0 else clamp)

    def bias_act_grad(self, dy, y, act_code, alpha, gain, clamp):
        self.calls += 1
        return grad_from_output(dy, y, act_code, alpha, gain, clamp)


def test_cuda_autograd_glue_upfirdn2d():
    from recon.model.ops.upfirdn2d import _UpFirDn2dCuda
    k = ReferenceKernels()
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    y = _UpFirDn2dCuda.apply(x, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0, k)
    y_ref = upfirdn2d_ref(x, f, up=2, padding=(2, 1, 2, 1), gain=4.0)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, dy)[0], torch.autograd.grad(y_ref, x, dy)[0])
    assert k.calls == 2


def test_cuda_autograd_glue_bias_act():
    from recon.model.ops.bias_act import _BiasActCuda
    k = ReferenceKernels()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = _BiasActCuda.apply(x, b, 1, 3, 0.2, math.sqrt(2), 0.7, k)
    y_ref = bias_act_ref(x, b, 1, "lrelu", clamp=0.7)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, [x, b], dy), torch.autograd.grad(y_ref, [x, b], dy)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("up", [1, 2])
def test_fp16_modulated_conv_prenormalisation(up):
    """The fp16 path pre-normalises weight and styles by their max (demodulation undoes it): in
    half precision it must give the float32 result to fp16 accuracy, with styles large enough that
    the raw products would lose precision."""
    torch.manual_seed(0)
    x, w, s = torch.randn(2, 8, 8, 8), torch.randn(6, 8, 3, 3), torch.randn(2, 8) * 30 + 10
    f = setup_filter([1, 3, 3, 1])
    ref = modulated_conv2d(x, w, s, up=up, padding=1, resample_filter=f, flip_weight=(up == 1))
    half = modulated_conv2d(x.half(), w, s, up=up, padding=1, resample_filter=f, flip_weight=(up == 1))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, atol=1e-2, rtol=1e-2)


def test_auto_sends_only_large_cuda_tensors_to_the_kernels(monkeypatch):
    """Below KERNEL_MIN_NUMEL an op's kernel lost to the reference on an H200 (host overhead) or
    was not measured to win; 'cuda' forces a kernel, 'ref' and CPU tensors never get one, and under
    torch.compile 'auto' leaves the ops to the compiler."""
    from recon.model.ops import _plugin

    class OnCuda:
        is_cuda = True

        def __init__(self, n):
            self.n = n

        def numel(self):
            return self.n

    for op, n in _plugin.KERNEL_MIN_NUMEL.items():
        big, small = OnCuda(n), OnCuda(n - 1)
        assert _plugin.worth_a_kernel(op, big, "auto") and not _plugin.worth_a_kernel(op, small, "auto")
        assert _plugin.worth_a_kernel(op, small, "cuda") and not _plugin.worth_a_kernel(op, big, "ref")
        assert not _plugin.worth_a_kernel(op, torch.empty(n), "auto")
    assert _plugin.KERNEL_MIN_NUMEL["bias_act"] == 32 * 1024 * 1024     # config-f's 1024 px layers
    monkeypatch.setattr(_plugin, "compiling", lambda: True)
    assert not _plugin.worth_a_kernel("upfirdn2d", OnCuda(1 << 30), "auto")
    assert _plugin.worth_a_kernel("upfirdn2d", OnCuda(1 << 30), "cuda")
