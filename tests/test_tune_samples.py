"""The tuning phase and posterior samples on the test generator (random weights: these check
behaviour against a known truth, not face quality). Resume, seeds and batch independence of
both are checked by the shared contract class (tests/test_methods.py, variants robust+tune and
official+samples)."""
import numpy as np
import pytest
import torch
from helpers import psnr_torch

from recon.config import ProjectorConfig, RobustConfig
from recon.restore import make_method
from recon.restore.degrade import Degradation, centre_mask
from recon.restore.method import UNCERTAINTY_FULL_SCALE
from recon.restore.randomness import TorchRandom
from recon.restore.tune import FACTOR_PREFIX, factors_from_latents, stored_bytes, tuned

ROBUST = dict(method="robust", num_steps=21, robust=RobustConfig(min_loss_res=4), snapshot_every=0)
# the bound the locality term keeps (stated in README, Restoration methods): on the test generator,
# 30 steps at lr 3e-3, outputs at latents a quarter of the way to random faces stay above 28 dB
NEARBY_PSNR_BOUND = 28.0


@pytest.fixture(scope="module")
def truth(G):
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(5)), None, truncation_psi=0.5)
    return G.synthesis(ws, noise_mode="const").clamp(-1, 1)


def tuned_run(G, vgg, truth, locality_weight):
    d = Degradation([{"type": "downsample", "factor": 2}], 32)
    cfg = ProjectorConfig(**ROBUST, tune=dict(steps=30, learning_rate=3e-3, locality_weight=locality_weight))
    return d, make_method(G, vgg, cfg).restore(d.target(truth), d, names=["a", "b"])


@pytest.fixture(scope="module")
def with_locality(G, vgg, truth):
    return tuned_run(G, vgg, truth, 1.0)


def nearby_psnr(G, results) -> torch.Tensor:
    """PSNR between the tuned and the original generator at latents a quarter of the way from
    each result's latent to a random face (fresh draws, not the ones tuning saw)."""
    pivot = torch.stack([r.latents["wpp"] for r in results])
    w_z = G.mapping(torch.randn(len(results), G.z_dim, generator=torch.Generator().manual_seed(99)), None)[:, 0]
    near = pivot + 0.25 * (w_z[:, None, None] - pivot)
    with torch.no_grad():
        original = G.synthesis(near, noise_mode="const", force_fp32=True)
        with tuned(G, [factors_from_latents(r.latents) for r in results]):
            changed = G.synthesis(near, noise_mode="const", force_fp32=True)
    return psnr_torch(original.clamp(-1, 1), changed.clamp(-1, 1))


def test_tuning_lowers_the_degraded_consistency_loss(with_locality):
    _, results = with_locality
    for r in results:
        tune = [h for h in r.history if h["phase"] == "tune"]
        assert len(tune) == 30 and {h["phase"] for h in r.history} == {"W", "W+", "W++", "tune"}
        assert tune[-1]["dist"] < 0.75 * tune[0]["dist"], (tune[0]["dist"], tune[-1]["dist"])
        assert "W++" in r.phase_images and not torch.equal(r.phase_images["W++"], r.image)   # untuned, kept


def test_the_locality_term_keeps_nearby_outputs(G, vgg, truth, with_locality):
    kept = nearby_psnr(G, with_locality[1])
    free = nearby_psnr(G, tuned_run(G, vgg, truth, 0.0)[1])
    assert (kept >= NEARBY_PSNR_BOUND).all(), kept
    assert (kept > free + 3).all(), (kept, free)          # without it, nearby faces change much more


def test_the_stored_factors_render_the_result_and_are_small(G, with_locality, tmp_path):
    d, results = with_locality
    r = results[0]
    r.save(tmp_path / "a")
    with np.load(tmp_path / "a" / "latents.npz") as z:
        stored = {k: z[k] for k in z.files if k.startswith(FACTOR_PREFIX)}
    assert all(v.dtype == np.float16 for v in stored.values())
    assert sum(v.nbytes for v in stored.values()) == stored_bytes(G, 4) == 19168    # rank 4, test generator
    factors = factors_from_latents({k: torch.from_numpy(v) for k, v in stored.items()})
    with torch.no_grad(), tuned(G, [factors]):
        again = G.synthesis(r.latents["wpp"][None], noise_mode="const", force_fp32=True)[0]
    torch.testing.assert_close(again, r.image, atol=1e-5, rtol=0)
    # a mismatched generator is refused, not silently misapplied
    factors["a"].popitem()
    with pytest.raises(ValueError, match="another generator"):
        tuned(G, [factors])


def test_a_start_found_with_tuning_is_restored_with_it(G, vgg, with_locality):
    d, results = with_locality
    base = [factors_from_latents(r.latents) for r in results]
    cfg = ProjectorConfig(**dict(ROBUST, num_steps=3))
    init = torch.stack([r.latents["wpp"] for r in results])
    with_base = make_method(G, vgg, cfg).restore(d.target(results[0].image[None].repeat(2, 1, 1, 1)), d,
                                                 names=["a", "b"], init=init, init_tuning=base)
    without = make_method(G, vgg, cfg).restore(d.target(results[0].image[None].repeat(2, 1, 1, 1)), d,
                                               names=["a", "b"], init=init)
    # the tuned generator explains its own image better than the untuned one
    assert with_base[0].history[0]["dist"] < without[0].history[0]["dist"]
    # and the result carries the tuning, so it renders by itself
    assert all(torch.equal(with_base[0].latents[k].float(), results[0].latents[k].float())
               for k in results[0].latents if k.startswith(FACTOR_PREFIX))


def test_samples_are_uncertain_where_nothing_was_observed(G, vgg, truth, tmp_path):
    mask = centre_mask(32, 0.5)
    d = Degradation([{"type": "mask"}], 32, masks=mask)
    cfg = ProjectorConfig(num_steps=30, w_avg_samples=300, latent_space="w+", samples=4, snapshot_every=0)
    results = make_method(G, vgg, cfg).restore(d.target(truth), d, names=["a", "b"],
                                               rngs=[TorchRandom(3), TorchRandom(4)])
    hole = mask[0, 0] < 0.5
    for r in results:
        s = r.samples
        assert s.images.shape == (4, 3, 32, 32) and len(set(map(float, s.images.flatten(1).sum(1)))) == 4
        assert s.best == int(np.argmin(s.dist)) and torch.equal(r.image, s.images[s.best])
        torch.testing.assert_close(s.mean, s.images.mean(0))
        assert float(s.std[hole].mean()) > 1.4 * float(s.std[~hole].mean())
    files = results[0].save(tmp_path / "a")
    assert {"mean.png", "uncertainty.png", "samples.json", "samples/sample03.png"} <= set(files)
    from recon.data.imageio import load_photo
    img, _ = load_photo(tmp_path / "a" / "uncertainty.png")
    want = (results[0].samples.std / UNCERTAINTY_FULL_SCALE).clamp(0, 1) * 255
    assert np.abs(img[..., 0].astype(float) - want.numpy()).max() <= 0.5 + 1e-3


def test_samples_refuse_a_given_start(G, vgg, truth):
    cfg = ProjectorConfig(num_steps=2, w_avg_samples=300, samples=2, snapshot_every=0)
    with pytest.raises(ValueError, match="draw their own starting latents"):
        make_method(G, vgg, cfg).restore(truth[:1], init=torch.zeros(1, G.w_dim))
    with pytest.raises(ValueError, match="init must be w_avg"):
        ProjectorConfig(samples=2, init="blur")
