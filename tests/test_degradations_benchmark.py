"""The degradations the benchmark needs: JPEG (Pillow's encoder for targets, a differentiable
approximation for generated images) and photon noise with dropout (a camera's draw for targets,
a Gaussian approximation with fresh draws per step for generated images)."""
import numpy as np
import pytest
import torch
from conftest import FACES
from PIL import Image

from recon.data.imageio import from_uint8
from recon.restore import jpeg
from recon.restore.degrade import Degradation, SurrogateClamp, normal_cdf, poisson_approx, poisson_target
from recon.restore.randomness import RecordedRandom, TorchRandom, step_draws


@pytest.fixture(scope="module")
def face():
    path = FACES / "obama.jpg"
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS))


def _mae255(a, b):
    return float((a.clamp(-1, 1) - b).abs().mean() * 127.5)


@pytest.mark.parametrize("quality", [6, 12, 18, 50])
def test_diff_jpeg_matches_the_real_encoder(face, quality, monkeypatch):
    real = from_uint8(jpeg.encode(face, quality))
    approx = jpeg.diff_jpeg(from_uint8(face), quality)
    err = _mae255(approx, real)
    assert err < 2.0, err                                     # of 255; the input itself is 5-12 away
    assert err < 0.4 * _mae255(from_uint8(face), real)
    # the reference transposes Pillow's tables; on a real encoder's output that is much worse
    natural = jpeg.quant_tables
    monkeypatch.setattr(jpeg, "quant_tables", lambda q: natural(q).transpose(1, 2))
    assert _mae255(jpeg.diff_jpeg(from_uint8(face), quality), real) > 1.5 * err


def test_jpeg_tables_are_pillows_in_natural_order():
    t = jpeg.quant_tables(50)                  # quality 50 is the standard (Annex K) table itself
    assert t[0, 0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]
    assert t[0, :, 0].tolist() == [16, 12, 14, 14, 18, 24, 49, 72]
    assert t[1, 0, :4].tolist() == [17, 18, 24, 47]


def test_diff_jpeg_transform_without_rounding_is_exact_on_smooth_chroma():
    # with the quantizer's rounding taken out, only the 2x2 chroma average loses anything
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1
    x = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
    out = jpeg.diff_jpeg(x, 12, rounding=lambda c: c)
    torch.testing.assert_close(out, x, atol=2e-6, rtol=0)     # JFIF's 6-digit matrices are inverse to ~1e-6


def test_diff_jpeg_gradients():
    x = (torch.rand(1, 3, 16, 16, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: jpeg.diff_jpeg(t, 12, rounding=lambda c: c), (x,))
    # the rounding's surrogate gradient is that of lerp(x, round(x) + (x - round(x))^3, 0.8)
    c = (torch.randn(1000, dtype=torch.float64) * 3).requires_grad_(True)
    (g,) = torch.autograd.grad(jpeg.SurrogateRound.apply(c).sum(), c)
    c2 = c.detach().clone().requires_grad_(True)
    r = torch.round(c2).detach()
    (want,) = torch.autograd.grad(torch.lerp(c2, r + (c2 - r) ** 3, 0.8).sum(), c2)
    torch.testing.assert_close(g, want)
    assert torch.equal(jpeg.SurrogateRound.apply(c.detach()), torch.round(c.detach()))
    # and the whole op passes gradient to every pixel
    y = jpeg.diff_jpeg(x, 12)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    assert (gx.abs() > 0).float().mean() > 0.99


def test_jpeg_op_target_is_the_encoder_and_prediction_the_approximation(face):
    d = Degradation([{"type": "jpeg", "quality": 9}], 256)
    x = from_uint8(face)
    assert torch.equal(d.target(x), from_uint8(jpeg.encode(face, 9)))
    torch.testing.assert_close(d(x), jpeg.diff_jpeg(x, 9))


def test_poisson_target_statistics():
    x = torch.full((1, 3, 128, 128), 0.0)                     # 0.5 in [0, 1]
    y = (poisson_target(x, 24.0, 0.0, torch.Generator().manual_seed(0)) + 1) / 2
    assert abs(float(y.mean()) - 0.5) < 0.005
    assert abs(float(y.var()) - 0.5 / 24) < 0.002            # Poisson: var = lambda / N^2
    assert torch.allclose(y * 24, (y * 24).round(), atol=1e-5)   # whole photon counts
    y = (poisson_target(x, 24.0, 0.3, torch.Generator().manual_seed(0)) + 1) / 2
    dropped = (y == 0).all(dim=1).float().mean()             # one draw for all channels of a pixel
    assert abs(float(dropped) - 0.3) < 0.02
    assert float((y == 0).any(dim=1).float().mean() - dropped) < 0.01   # almost no single-channel zeros


def test_poisson_approximation_moments_and_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.full((1, 3, 128, 128), 0.0)
    normal = torch.randn(1, 3, 128, 128, generator=g)
    y = (poisson_approx(x, 24.0, 0.0, normal, torch.ones(1, 1, 128, 128)) + 1) / 2
    assert abs(float(y.mean()) - (0.5 - 0.5 / 24)) < 0.005  # the reference's -0.5 offset
    assert abs(float(y.var()) - 0.5 / 24) < 0.002            # the same variance as the camera
    u = normal_cdf(torch.randn(1, 1, 256, 256, generator=g))
    assert abs(float((u < 0.16).float().mean()) - 0.16) < 0.01
    xs = (torch.rand(1, 3, 8, 8, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    n = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    un = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: poisson_approx(t, 24.0, 0.3, n, un, clamp=False), (xs,))
    # the surrogate clamp: exact forward, sigmoid(2(x - 0.5))' backward
    v = torch.linspace(-2, 3, 101, dtype=torch.float64).requires_grad_(True)
    out = SurrogateClamp.apply(v)
    assert torch.equal(out, v.detach().clamp(0, 1))
    (gv,) = torch.autograd.grad(out.sum(), v)
    s = torch.sigmoid(2 * (v.detach() - 0.5))
    torch.testing.assert_close(gv, 2 * s * (1 - s))


def test_stochastic_draws_are_fresh_per_step_repeatable_and_per_target():
    d = Degradation([{"type": "poisson", "photons": 12, "dropout": 0.32}], 32)
    assert d.stochastic and not Degradation(["blur"], 64).stochastic
    x = torch.zeros(2, 3, 32, 32)
    rngs = [TorchRandom(5), TorchRandom(5)]
    a, b = d(x, draws=step_draws(rngs, 0)), d(x, draws=step_draws(rngs, 1))
    assert not torch.equal(a, b)                                  # fresh at every step
    assert torch.equal(a, d(x, draws=step_draws([TorchRandom(5), TorchRandom(5)], 0)))   # repeatable
    assert torch.equal(a[1:], d(x[1:], draws=step_draws(rngs[1:], 0)))                  # alone or in a batch
    assert not torch.equal(a, d(x, draws=step_draws([TorchRandom(6)] * 2, 0)))          # a target's own seed
    # recorded draws replay through the same seam
    rec = {(0, t): rngs[0].normal(0, t, s) for t, s in (("poisson.normal", (3, 32, 32)),
                                                          ("poisson.dropout", (1, 32, 32)))}
    replay = d(x[:1], draws=step_draws([RecordedRandom({}, torch.zeros(0), rec)], 0))
    assert torch.equal(replay, a[:1])
    # without draws (a saved result's degraded image) the draw is fixed by the seed
    assert torch.equal(d(x), d(x))


def test_new_ops_in_the_params_schema():
    from recon.config import JpegOp, PoissonOp, check_op_fits, parse_op
    assert parse_op({"type": "jpeg", "quality": 6}) == JpegOp(quality=6)
    assert parse_op("poisson") == PoissonOp(photons=24.0, dropout=0.16)     # the benchmark's M level
    for bad, key in [({"type": "jpeg", "quality": 0}, "quality"), ({"type": "poisson", "dropout": 1.0}, "dropout"),
                     ({"type": "poisson", "photons": -1}, "photons")]:
        with pytest.raises(ValueError, match=key):
            parse_op(bad, "m")
    with pytest.raises(ValueError, match="multiple of 16"):
        check_op_fits([JpegOp()], 8)
