"""The robust method (W -> W+ -> W++, normalized gradient descent, multiscale loss) replays the
reference code's recorded run on the tiny-a generator: ../shared/golden/robust-tiny-a."""
import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED, need
from recon.config import RobustConfig
from recon.robust import RobustProjector, multiscale_loss, ngd_step

TOL = dict(atol=1e-4, rtol=1e-4)


def standin_lpips(x, y):
    """The golden run's weight-free LPIPS stand-in: mean((f(2x-1) - f(2y-1))^2), f = tanh(avgpool2)."""
    def f(z):
        return torch.tanh(F.avg_pool2d(z * 2 - 1, 2))
    return (f(x) - f(y)).square().mean(dim=[1, 2, 3])


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file
    return load_file(str(need(SHARED / "golden" / "robust-tiny-a") / "robust.safetensors"))


def test_replays_the_reference_run(golden_G, golden):
    cfg = RobustConfig(steps=[3, 3, 3], learning_rates=[0.08, 0.02, 0.005], min_loss_res=2)
    torch.testing.assert_close(golden_G.mapping.w_avg[None], golden["w_init"], **TOL)
    proj = RobustProjector(golden_G, standin_lpips, cfg)
    (res,) = proj.project(golden["target"], lambda x, draws=None: F.avg_pool2d(x, 2), record=True)

    losses = torch.tensor([h["loss"] for h in res.history])
    torch.testing.assert_close(losses, golden["loss"], **TOL)
    terms = torch.tensor([[h[f"term{k}"] for k in range(4)] for h in res.history])
    torch.testing.assert_close(terms, golden["loss_terms"], **TOL)
    torch.testing.assert_close(torch.stack(res.trajectory["W"])[:, None], golden["w_steps"], **TOL)
    torch.testing.assert_close(torch.stack(res.trajectory["W+"])[:, None], golden["wp_steps"], **TOL)

    # W++: the reference keeps 512 rows per ws row; the rows kept here are the first K of each
    K = golden_G.synthesis.max_channels
    ref = golden["wpp_final"].reshape(1, golden_G.num_ws, 512, -1)
    torch.testing.assert_close(res.latent[None], ref[:, :, :K], **TOL)
    live = golden["wpp_live_rows"].reshape(golden_G.num_ws, 512).bool()
    assert not live[:, K:].any() and int(live.sum()) == 179
    moved = (res.latent - res.trajectory["W+"][-1][:, None]).norm(dim=-1) > 0
    assert torch.equal(moved, live[:, :K])              # exactly the live rows moved

    torch.testing.assert_close(res.images["W"][None], golden["pred_W"], **TOL)
    torch.testing.assert_close(res.images["W+"][None], golden["pred_Wp"], **TOL)
    torch.testing.assert_close(res.images["W++"][None], golden["final_image"], **TOL)
    with torch.no_grad():
        final, _ = multiscale_loss(standin_lpips, F.avg_pool2d(proj.render(res.latent[None]), 2),
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
