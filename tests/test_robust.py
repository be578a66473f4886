"""The robust method (W -> W+ -> W++, normalized gradient descent, multiscale loss) replays the
reference code's recorded run on the tiny-a generator: tests/fixtures/robust-tiny-a."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import GOLDEN_ROBUST

from recon.config import ProjectorConfig, RobustConfig
from recon.restore.randomness import RecordedRandom, TorchRandom, step_draws
from recon.restore.robust import RobustMethod, multiscale_loss, ngd_step
from recon.verify.standins import Pool
from recon.verify.standins import robust_lpips as standin_lpips

TOL = dict(atol=1e-4, rtol=1e-4)


def robust(G, lpips, robust_cfg: RobustConfig, num_steps: int, **kw) -> RobustMethod:
    return RobustMethod(G, lpips, ProjectorConfig(method="robust", num_steps=num_steps, robust=robust_cfg,
                                                  snapshot_every=0, **kw))


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file
    return load_file(str(GOLDEN_ROBUST / "robust.safetensors"))


def test_replays_the_reference_run(golden_G, golden):
    cfg = RobustConfig(learning_rates=[0.08, 0.02, 0.005], min_loss_res=2)
    torch.testing.assert_close(golden_G.mapping.w_avg[None], golden["w_init"], **TOL)
    proj = robust(golden_G, standin_lpips, cfg, num_steps=9)            # 3 steps per phase
    (res,) = proj.restore(golden["target"] * 2 - 1, Pool(), record=True)

    losses = torch.tensor([h["loss"] for h in res.history])
    torch.testing.assert_close(losses, golden["loss"], **TOL)
    terms = torch.tensor([[h[f"term{k}"] for k in range(4)] for h in res.history])
    torch.testing.assert_close(terms, golden["loss_terms"], **TOL)
    torch.testing.assert_close(torch.stack(res.trajectory["W"])[:, None], golden["w_steps"], **TOL)
    torch.testing.assert_close(torch.stack(res.trajectory["W+"])[:, None], golden["wp_steps"], **TOL)

    # W++: the reference keeps 512 rows per ws row; the rows kept here are the first K of each
    K = golden_G.synthesis.max_channels
    ref = golden["wpp_final"].reshape(1, golden_G.num_ws, 512, -1)
    torch.testing.assert_close(res.latents["wpp"][None], ref[:, :, :K], **TOL)
    live = golden["wpp_live_rows"].reshape(golden_G.num_ws, 512).bool()
    assert not live[:, K:].any() and int(live.sum()) == 179
    moved = (res.latents["wpp"] - res.trajectory["W+"][-1][:, None]).norm(dim=-1) > 0
    assert torch.equal(moved, live[:, :K])              # exactly the live rows moved

    torch.testing.assert_close((res.phase_images["W"][None] + 1) / 2, golden["pred_W"], **TOL)
    torch.testing.assert_close((res.phase_images["W+"][None] + 1) / 2, golden["pred_Wp"], **TOL)
    torch.testing.assert_close((res.image[None] + 1) / 2, golden["final_image"], **TOL)
    torch.testing.assert_close((res.degraded[None] + 1) / 2, golden["final_degraded"], **TOL)
    with torch.no_grad():
        final, _ = multiscale_loss(standin_lpips, F.avg_pool2d(proj.render(res.latents["wpp"][None]), 2),
                                   golden["target"], cfg)
    torch.testing.assert_close(final[0], golden["loss_final"], **TOL)


def test_ngd_moves_every_live_vector_by_lr():
    p = torch.zeros(2, 3, 4, requires_grad=True)
    p.grad = torch.randn(2, 3, 4)
    p.grad[1, 2] = 0                                     # no gradient: stays
    ngd_step(p, 0.5)
    moved = p.detach().norm(dim=-1)
    torch.testing.assert_close(moved[0], torch.full((3,), 0.5))
    assert moved[1, 2] == 0 and torch.isfinite(p).all()


def test_per_filter_styles_start_from_the_w_plus_image(golden_G):
    ws = torch.randn(2, golden_G.num_ws, golden_G.w_dim)
    wpp = ws[:, :, None].repeat(1, 1, golden_G.synthesis.max_channels, 1)
    torch.testing.assert_close(golden_G.synthesis(wpp, noise_mode="const"), golden_G.synthesis(ws, noise_mode="const"),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="per filter"):
        golden_G.synthesis(wpp[:, :, :3], noise_mode="const")


def test_hole_noise_is_fresh_per_scale_and_step_and_the_same_in_both_images(golden_G, golden):
    cfg = RobustConfig(min_loss_res=2)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    mask = torch.ones(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 0
    rngs = [TorchRandom(3), TorchRandom(4)]
    draws = step_draws(rngs, 7)
    total, terms = multiscale_loss(standin_lpips, x, y, cfg, mask, lambda lv, s: draws(f"hole.{lv}", s))
    # by hand: level k adds (n_k + 0.5) / 2 in the pooled holes of both images
    xs, ys, m, want = x, y, mask, []
    for level in range(3):
        n = (torch.stack([r.normal(7, f"hole.{level}", (3, xs.shape[-1], xs.shape[-1])) for r in rngs]) + 0.5) / 2
        want.append(standin_lpips(xs + n * (1 - m), ys + n * (1 - m)))
        xs, ys, m = F.avg_pool2d(xs, 2), F.avg_pool2d(ys, 2), F.avg_pool2d(m, 2)
    want.append(0.1 * (xs - ys).abs().mean(dim=[1, 2, 3]))
    torch.testing.assert_close(terms, torch.stack(want, 1))
    # Through the mask degradation, what a generated image holds in the holes cannot reach the
    # loss: images that agree in the known pixels score 0 against each other whatever their holes
    # hold, no gradient reaches a hole pixel, and a change in a known pixel does show.
    from recon.restore.degrade import Degradation
    d = Degradation([{"type": "mask"}], 16, masks=mask)
    a = x.clone().requires_grad_(True)
    b = torch.where(mask.bool(), x, torch.rand(2, 3, 16, 16))            # other holes, same known pixels

    def loss(u, v):
        return multiscale_loss(standin_lpips, (d(u * 2 - 1, draws=draws) + 1) / 2, (d(v * 2 - 1) + 1) / 2, cfg,
                               mask, lambda lv, s: draws(f"hole.{lv}", s))[0]
    same = loss(a, b)
    assert torch.all(same == 0)
    grad, = torch.autograd.grad(loss(a, y).sum(), a)
    assert grad[(1 - mask).bool().expand_as(grad)].abs().max() == 0 and grad.abs().max() > 0
    c = b.clone()
    c[:, :, 0, 0] += 0.5                                                  # a known pixel
    assert torch.all(loss(c, b) > 0)
    # a masked restoration is repeatable, alone or in a batch, and replays from recorded draws
    target = golden["target"].repeat(2, 1, 1, 1) * 2 - 1
    m16 = mask[:1]
    proj = robust(golden_G, standin_lpips, cfg, num_steps=3)
    a = proj.restore(target, Pool(m16), rngs=[TorchRandom(1), TorchRandom(2)])
    b = proj.restore(target[1:], Pool(m16), rngs=[TorchRandom(2)])
    torch.testing.assert_close(a[1].latents["wpp"], b[0].latents["wpp"], atol=1e-6, rtol=1e-6)
    assert not torch.equal(a[0].latents["wpp"], a[1].latents["wpp"])           # each target has its own draws
    rec = {(s, f"hole.{lv}"): TorchRandom(2).normal(s, f"hole.{lv}", (3, 16 >> lv, 16 >> lv))
           for s in range(3) for lv in range(3)}
    c = proj.restore(target[1:], Pool(m16), rngs=[RecordedRandom({}, torch.zeros(0), rec)])
    assert torch.equal(c[0].latents["wpp"], b[0].latents["wpp"])


def test_init_starts_the_phase_the_latent_belongs_to(golden_G, golden):
    cfg = RobustConfig(min_loss_res=2)
    proj = robust(golden_G, standin_lpips, cfg, num_steps=6)
    target = golden["target"] * 2 - 1
    first = proj.restore(target, Pool())[0]
    # from the W+ result: the W phase is skipped and W+ continues from there
    wp = first.latents["wp"][None]
    again = proj.restore(target, Pool(), init=wp, record=True)[0]
    assert [h["phase"] for h in again.history] == ["W+"] * 2 + ["W++"] * 2
    assert "W" not in again.phase_images and "w" not in again.latents
    assert list(again.phase_images) == RobustMethod.phase_images(proj.cfg, wp[0]) == ["W+"]
    assert (again.trajectory["W+"][0] - wp).norm(dim=-1).max() <= 0.02 + 1e-6    # one NGD step from it
    # from W: the same as a normal run started at that w
    w = golden_G.mapping.w_avg[None].float()
    kept = w.clone()
    same = proj.restore(target, Pool(), init=w)[0]
    assert torch.equal(w, kept)                     # the start is copied, never updated in place
    assert torch.equal(same.latents["wpp"], first.latents["wpp"])
    with pytest.raises(ValueError, match="init latent must be"):
        proj.restore(target, Pool(), init=torch.zeros(1, 3, 64))


def test_fixed_target_features_are_computed_once_with_the_same_result(golden_G, tmp_path):
    from tiny_vgg import write_tiny_vgg

    from recon.model.perceptual import VGGLPIPS, load_vgg16
    write_tiny_vgg(tmp_path / "vgg.pt")
    lpips = VGGLPIPS(load_vgg16(tmp_path / "vgg.pt"))
    calls = []

    class Counting(VGGLPIPS):
        def features(self, x):
            calls.append(x.requires_grad)
            return super().features(x)
    cfg = RobustConfig(phases=[2, 1, 1], min_loss_res=4)
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def plain(x, y):                    # the uncached distance, not a VGGLPIPS instance
        return lpips(x, y)
    ref = robust(golden_G, plain, cfg, num_steps=4).restore(target)[0]
    got = robust(golden_G, Counting(lpips.vgg), cfg, num_steps=4).restore(target)[0]
    assert torch.equal(got.latents["wpp"], ref.latents["wpp"]) and got.history == ref.history
    levels = 3                                            # 32, 16, 8 px
    assert calls.count(False) == levels and calls.count(True) == 4 * levels   # targets once, images every step


def test_the_upsampling_case_through_the_pipelines_own_degradation(golden_G, golden):
    """The fixture's 2x upsampling case (level XS) with the pipeline's DownsampleOp: its
    observation is the 16 px image, the generated image is area-reduced to it, the loss's scales
    follow it (16, 8, 4 px); the whole run equals the reference's (1e-4)."""
    from recon.config import DownsampleOp
    from recon.data.imageio import from_uint8, to_uint8
    from recon.restore.degrade import Degradation
    d = Degradation([DownsampleOp(factor=2, filter="bicubic")], 32)
    assert d.observed_size == 16
    proj = robust(golden_G, standin_lpips, RobustConfig(min_loss_res=2), num_steps=9)
    (res,) = proj.restore(golden["target"] * 2 - 1, d, record=True)
    torch.testing.assert_close(torch.tensor([h["loss"] for h in res.history]), golden["loss"], **TOL)
    torch.testing.assert_close(torch.tensor([[h[f"term{k}"] for k in range(4)] for h in res.history]),
                               golden["loss_terms"], **TOL)
    K = golden_G.synthesis.max_channels
    ref = golden["wpp_final"].reshape(1, golden_G.num_ws, 512, -1)[:, :, :K]
    torch.testing.assert_close(res.latents["wpp"][None], ref, **TOL)
    torch.testing.assert_close((res.image[None] + 1) / 2, golden["final_image"], **TOL)
    torch.testing.assert_close((res.degraded[None] + 1) / 2, golden["final_degraded"], **TOL)
    # and the pipeline makes the same 16 px target from the truth, up to 8-bit rounding (the
    # reference truncates where recon rounds, and resizes the 8-bit image where recon resizes floats)
    truth = golden["ground_truth"].clamp(0, 1) * 2 - 1
    made = to_uint8(d.target(from_uint8(to_uint8(truth)[0])))[0]
    assert made.shape == (16, 16, 3)
    diff = np.abs(made.astype(int) - golden["target_uint8"].permute(1, 2, 0).numpy().astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.6, (diff.max(), diff.mean())
