"""Degradation operators and the perceptual-loss boundary, with numbers."""
import numpy as np
import pytest
import torch
from helpers import psnr_torch
from PIL import Image

from recon.data.imageio import from_uint8, to_uint8
from recon.model.perceptual import VGGFeatures, to_vgg_range
from recon.restore.degrade import (
    Degradation,
    DegradationError,
    apply_mask,
    centre_mask,
    downsample,
    gaussian_blur,
    gaussian_kernel1d,
    grayscale,
    mask_from_color,
    mask_from_file,
    parse_ops,
)


def test_uint8_roundtrip_and_ranges():
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    x = from_uint8(arr)
    assert x.shape == (1, 3, 16, 16) and x.min() == -1 and x.max() == 1
    assert np.array_equal(to_uint8(x)[0], arr)
    assert np.array_equal(to_uint8(torch.full((1, 3, 2, 2), 5.0))[0], np.full((2, 2, 3), 255))


def test_gaussian_blur():
    k = gaussian_kernel1d(21, 6.0)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6) and torch.equal(k, k.flip(0))
    assert k[10] / k[0] == pytest.approx(np.exp(0.5 * (10 / 6.0) ** 2), rel=1e-4)
    const = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 21, 6.0), const)
    x = torch.zeros(1, 1, 33, 33)
    x[..., 16, 16] = 1
    y = gaussian_blur(x, 21, 6.0)
    torch.testing.assert_close(y[0, 0, 16, 6:27], k[:, None].mul(k[10]).squeeze(), atol=1e-7, rtol=1e-5)
    with pytest.raises(DegradationError):
        gaussian_blur(x, 20, 6.0)


def test_grayscale_luma_weights():
    x = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    g = grayscale(x)
    assert g.shape == (1, 3, 1, 1)
    assert torch.allclose(g, torch.full_like(g, 0.299 - 0.114))


def test_downsample_observes_the_small_image():
    """The observation is what a user has: factor times smaller, each pixel the mean of its block."""
    x = torch.linspace(-1, 1, 64).view(1, 1, 1, 64).repeat(1, 3, 64, 1)
    y = downsample(x, 4)
    assert y.shape == (1, 3, 16, 16)
    torch.testing.assert_close(y[0, 0, 0, 0], x[0, 0, :4, :4].mean())
    checker = (torch.arange(64).view(1, -1) + torch.arange(64).view(-1, 1)) % 2 * 2 - 1.0
    assert downsample(checker.view(1, 1, 64, 64).float(), 4).abs().max() < 1e-6
    d = Degradation([{"type": "downsample", "factor": 4}, {"type": "mask"}], 64, masks=centre_mask(64, 0.5))
    assert d.observed_size == 16 and d(x).shape == (1, 3, 16, 16) and d.known("cpu").shape == (1, 1, 16, 16)
    # the mask applies at the small size, area-reduced: a 32 px hole is an 8 px one
    assert (d(x)[0, 0] == -1).sum() == 64 and d.known("cpu").mean() == pytest.approx(0.75)


def test_masks(tmp_path):
    m = centre_mask(100, 0.4)
    assert m.shape == (1, 1, 100, 100) and m.mean().item() == pytest.approx(1 - 0.16)
    assert m[0, 0, 50, 50] == 0 and m[0, 0, 0, 0] == 1
    # white = missing in mask files
    hole = np.zeros((64, 64), np.uint8)
    hole[10:20, 30:40] = 255
    Image.fromarray(hole).save(tmp_path / "x_mask.png")
    fm = mask_from_file(tmp_path / "x_mask.png", 32)
    assert fm.shape == (1, 1, 32, 32) and fm[0, 0, 7, 17] == 0 and fm[0, 0, 0, 0] == 1
    assert fm.mean().item() == pytest.approx(1 - 25 / 1024)
    photo = np.full((8, 8, 3), 100, np.uint8)
    photo[2:4, 2:4] = (0, 255, 0)
    cm = mask_from_color(photo, (0, 255, 0), tolerance=8)
    assert cm.sum().item() == 64 - 4 and cm[0, 0, 2, 2] == 0


def test_mask_degradation_multiplies_as_the_reference_does():
    """Known pixels are kept, missing ones black (0 in [0, 1], -1 here) in both images."""
    m = centre_mask(32, 0.4)
    d = Degradation([{"type": "mask"}], 32, masks=m, seed=3)
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    da, db = d(a), d(b)
    hole = m.expand_as(da) == 0
    assert torch.equal(da[hole], db[hole]) and (da[hole] == -1).all()   # the hole carries no signal
    torch.testing.assert_close(d(da), da)            # re-applying changes nothing
    torch.testing.assert_close(da[~hole], a[~hole])
    with pytest.raises(DegradationError, match=r"got fill 'noise', which is gone: missing pixels are multiplied"):
        Degradation([{"type": "mask", "fill": "noise"}], 32, masks=m)


def test_chain_order_and_noise_only_on_target():
    ops = parse_ops([{"type": "blur", "kernel": 5, "sigma": 1.0}, "grayscale", {"type": "noise", "sigma": 10}])
    d = Degradation(ops, 32)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(d(x), grayscale(gaussian_blur(x, 5, 1.0)))
    t = d.target(x)
    resid = t - d(x)
    assert resid.std().item() == pytest.approx(10 / 127.5, rel=0.1)
    torch.testing.assert_close(resid[0], resid[1])   # the same draw alone or in a batch
    assert parse_ops("none") == [] and parse_ops(None) == []
    chain = parse_ops({"type": "chain", "ops": ["grayscale", {"type": "chain", "ops": ["none", {"type": "blur"}]}]})
    assert [op.type for op in chain] == ["grayscale", "blur"] and chain[1].kernel == 21 and chain[1].sigma == 6.0
    with pytest.raises(DegradationError, match="unknown degradation"):
        Degradation([{"type": "sepia"}], 32)
    with pytest.raises(DegradationError, match="divide"):
        Degradation([{"type": "downsample", "factor": 3}], 32)


def test_apply_mask():
    m = torch.tensor([[[[1.0, 0.0, 0.5]]]])
    out = apply_mask(torch.tensor([[[[0.5, 0.5, 1.0]]]]), m)           # in [0, 1]: x * m
    assert out.tolist() == [[[[0.5, -1.0, 0.0]]]]


class Recorder(torch.nn.Module):
    def forward(self, img, resize_images: bool = True, return_lpips: bool = False):
        self.seen = (img.shape, float(img.min()), float(img.max()), resize_images, return_lpips)
        return img.flatten(1)


def test_vgg_boundary_ranges_and_resize():
    rec = Recorder()
    f = VGGFeatures(rec)
    f(torch.full((1, 3, 512, 512), -1.0))
    assert rec.seen == ((1, 3, 256, 256), 0.0, 0.0, False, True)
    f(torch.full((1, 3, 128, 128), 1.0))
    assert rec.seen == ((1, 3, 128, 128), 255.0, 255.0, False, True)
    # area resize: a 2x2 checker of 512 px averages to flat grey at 256
    x = torch.zeros(1, 3, 512, 512)
    x[..., ::2, ::2] = 1
    x[..., 1::2, 1::2] = 1
    x = x * 2 - 1
    assert torch.allclose(to_vgg_range(x), torch.full((1, 3, 256, 256), 127.5))


def test_differentiable_ops_pass_gradcheck():
    """As kornia tests its image ops: analytic gradients against finite differences, in float64."""
    from recon.restore.degrade import gaussian_blur, grayscale
    x = torch.rand(1, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gaussian_blur(t, 5, 1.3), (x,))
    assert torch.autograd.gradcheck(grayscale, (x,))
    assert torch.autograd.gradcheck(lambda t: downsample(t, 4), (x,))
    m = centre_mask(12, 0.5).double()
    assert torch.autograd.gradcheck(lambda t: apply_mask(t, m), (x,))
    assert torch.autograd.gradcheck(lambda t: apply_mask(downsample(t, 2), m), (x,))     # mask at 6 px


def test_brush_masks_are_seeded_strokes():
    from recon.restore.degrade import brush_mask
    a, b = brush_mask(64, 5, seed=1), brush_mask(64, 5, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, brush_mask(64, 5, seed=2))
    assert a.shape == (1, 1, 64, 64) and 0 <= float(a.min()) and float(a.max()) <= 1
    holes = [float((brush_mask(64, k, seed=3) < 0.5).float().mean()) for k in (1, 5, 17)]
    assert 0.01 < holes[0] < holes[1] < holes[2] < 0.9          # more strokes, more missing


def test_downsample_filters_for_targets():
    """The target may be shrunk by Pillow's filters; the generated image always by the box, so
    with filter box the two paths are one, and other filters stay close on smooth images."""
    x = torch.linspace(-1, 1, 64).view(1, 1, 1, 64).repeat(1, 3, 64, 1)
    x = x * torch.linspace(-1, 1, 64).view(1, 1, 64, 1).cos()
    box = Degradation([{"type": "downsample", "factor": 4}], 64)
    torch.testing.assert_close(box.target(x), box(x))
    for f in ("bilinear", "bicubic", "lanczos"):
        d = Degradation([{"type": "downsample", "factor": 4, "filter": f}], 64)
        assert not torch.equal(d.target(x), d(x))
        assert d(x).shape == (1, 3, 16, 16) and psnr_torch(d.target(x), d(x)).item() > 30, f
        torch.testing.assert_close(d(x), box(x))


def test_a_mask_after_a_downsample_is_the_references():
    """The reference's protocol: the images multiplied by the mask bicubic-resized to the
    observation (no antialias, its overshoot kept), the hole noise of the loss on the area-resized
    mask; the target made by the true downsample, then the bicubic-resized mask."""
    import torch.nn.functional as F

    from recon.config import DownsampleOp, MaskOp
    mask = centre_mask(32, 0.4)
    d = Degradation([DownsampleOp(factor=2, filter="bicubic"), MaskOp(source="center")], 32, masks=mask)
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    resized = F.interpolate(mask, size=(16, 16), mode="bicubic", align_corners=False)
    assert resized.max() > 1 and resized.min() < 0                       # bicubic overshoots, and it is kept
    torch.testing.assert_close(d(img), (F.avg_pool2d(img, 2) + 1) * resized - 1, atol=1e-6, rtol=0)
    torch.testing.assert_close(d.known("cpu"), F.interpolate(mask, size=(16, 16), mode="area"), atol=0, rtol=0)
    small = downsample(img, 2, "bicubic")
    torch.testing.assert_close(d.target(img), (small + 1) * resized - 1, atol=1e-6, rtol=0)
    torch.testing.assert_close(apply_mask(small, mask), (small + 1) * resized - 1, atol=1e-6, rtol=0)
