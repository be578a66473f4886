"""The generator reproduces NVIDIA's official outputs and gradients (tests/fixtures/stylegan2-tiny-a)."""
import copy

import pytest
import torch

TOL = dict(atol=1e-4, rtol=1e-4)


def assert_close(out, ref):
    torch.testing.assert_close(out, ref, **TOL)


def test_architecture_matches_golden(golden_G):
    assert golden_G.num_ws == 8
    assert (golden_G.z_dim, golden_G.w_dim, golden_G.c_dim, golden_G.img_resolution) == (64, 64, 0, 32)
    assert sum(p.numel() for p in golden_G.parameters()) == 130891


@pytest.mark.parametrize("name,kwargs", [
    ("ws_psi1", dict(truncation_psi=1)),
    ("ws_psi07", dict(truncation_psi=0.7)),
    ("ws_psi07_cutoff", dict(truncation_psi=0.7, truncation_cutoff=4)),
])
def test_mapping(golden_G, golden_cases, name, kwargs):
    ws = golden_G.mapping(golden_cases["z"], None, **kwargs)
    assert ws.shape == (4, 8, 64)
    assert_close(ws, golden_cases[name])


def test_mapping_never_moves_w_avg(golden_G, golden_cases):
    before = golden_G.mapping.w_avg.clone()
    golden_G.mapping.train()
    try:
        golden_G.mapping(golden_cases["z"], None)
    finally:
        golden_G.mapping.eval()
    assert torch.equal(before, golden_G.mapping.w_avg)


@pytest.mark.parametrize("name,ws_name,kwargs", [
    ("img_synth_psi1_const", "ws_psi1", dict(noise_mode="const")),
    ("img_synth_psi1_none", "ws_psi1", dict(noise_mode="none")),
    ("img_synth_mixed_const", "ws_mixed", dict(noise_mode="const")),
    ("img_synth_mixed_const_unfused", "ws_mixed", dict(noise_mode="const", fused_modconv=False)),
])
def test_synthesis(golden_G, golden_cases, name, ws_name, kwargs):
    img = golden_G.synthesis(golden_cases[ws_name], **kwargs)
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    assert_close(img, golden_cases[name])


def test_synthesis_batch_of_one(golden_G, golden_cases):
    assert_close(golden_G.synthesis(golden_cases["ws_mixed"][:1], noise_mode="const"),
                 golden_cases["img_synth_mixed0_const_b1"])


def test_full_generator_with_truncation(golden_G, golden_cases):
    assert_close(golden_G(golden_cases["z"], None, truncation_psi=0.5, noise_mode="const"),
                 golden_cases["img_G_psi05_const"])


def test_conv_clamp_variant(golden_dir, golden_cases):
    from recon.model.checkpoint import build_generator, read_generator
    cfg, state = read_generator(golden_dir / "G_ema.safetensors", golden_dir / "config.json")
    cfg = copy.deepcopy(cfg)
    cfg["synthesis_kwargs"]["conv_clamp"] = 1.0
    G = build_generator(cfg, state).eval()
    img = G.synthesis(golden_cases["ws_mixed"], noise_mode="const")
    assert_close(img, golden_cases["img_synth_mixed_const_clampvariant"])
    # The clamp really matters here: the unclamped image differs by far more than the tolerance.
    assert (img - golden_cases["img_synth_mixed_const"]).abs().max() > 1.0


def test_gradients_wrt_ws_and_noise(golden_G, golden_cases):
    ws = golden_cases["ws_mixed"].clone().requires_grad_(True)
    noise = golden_G.synthesis.noise_buffers()
    for buf in noise.values():
        buf.requires_grad_(True)
        buf.grad = None
    try:
        loss = (golden_G.synthesis(ws, noise_mode="const") * golden_cases["grad_R"]).sum()
        loss.backward()
        assert_close(loss.detach(), golden_cases["loss_mixed"])
        assert_close(ws.grad, golden_cases["grad_ws_mixed"])
        assert len(noise) == 7
        for name, buf in noise.items():
            assert_close(buf.grad, golden_cases[f"grad_noise.synthesis.{name}"])
    finally:
        for buf in noise.values():
            buf.requires_grad_(False)
            buf.grad = None


def test_random_noise_mode_is_seeded_and_differs(golden_G, golden_cases):
    ws = golden_cases["ws_psi1"]
    torch.manual_seed(1)
    a = golden_G.synthesis(ws, noise_mode="random")
    torch.manual_seed(1)
    b = golden_G.synthesis(ws, noise_mode="random")
    assert torch.equal(a, b)
    assert (a - golden_cases["img_synth_psi1_const"]).abs().max() > 1e-3


def test_bad_ws_shape_is_a_clear_error(golden_G):
    with pytest.raises(ValueError, match=r"ws must be \[N, 8, 64\]"):
        golden_G.synthesis(torch.zeros(1, 7, 64))
    with pytest.raises(ValueError, match="noise_mode"):
        golden_G.synthesis(torch.zeros(1, 8, 64), noise_mode="bogus")
