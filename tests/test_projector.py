"""NVIDIA's projector (the official method): the official run reproduced, reconstruction and
restoration with numbers, its regularizer, bad input, the command line. What every method shares
(batching, resume, determinism, history, saving) is tested in test_methods.py."""
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import psnr_torch
from tiny_vgg import write_tiny_vgg

import recon
from recon.config import ProjectorConfig
from recon.data.imageio import from_uint8, to_uint8
from recon.model.perceptual import VGGFeatures, load_vgg16
from recon.restore.degrade import Degradation, DegradationError, centre_mask
from recon.restore.official import OfficialMethod, learning_rate, w_stats
from recon.restore.randomness import RecordedRandom
from recon.verify.standins import projector_features as standin_features


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "tiny_vgg.pt"
    write_tiny_vgg(path)
    return VGGFeatures(load_vgg16(path))


@pytest.fixture(scope="module")
def clean(G):
    g = torch.Generator().manual_seed(5)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=g), None, truncation_psi=0.5)
    return G.synthesis(ws, noise_mode="const")


# ---------------------------------------------------------------------------------------------
# The official run

def test_reproduces_the_official_projector(golden_dir, G):
    from safetensors.torch import load_file
    P = load_file(str(golden_dir / "projector.safetensors"))
    pr = OfficialMethod(G, standin_features, ProjectorConfig(num_steps=30, snapshot_every=0))
    torch.testing.assert_close(pr.w_avg.cpu(), P["w_avg_proj"], atol=1e-5, rtol=1e-5)
    assert pr.w_std == pytest.approx(float(P["w_std_proj"]), rel=1e-5)

    prefix = "noise_init.synthesis."
    rng = RecordedRandom({k[len(prefix):]: v for k, v in P.items() if k.startswith(prefix)}, P["w_noise_unit"])
    target = from_uint8(P["target_uint8"].permute(1, 2, 0).numpy())
    (res,) = pr.restore(target, rngs=[rng], record=True)

    loss = torch.tensor([h["loss"] for h in res.history])
    torch.testing.assert_close(loss, P["loss"], atol=1e-3, rtol=1e-4)
    lr = torch.tensor([h["lr"] for h in res.history], dtype=torch.float64)
    torch.testing.assert_close(lr, P["lr"], atol=1e-12, rtol=0)
    scale = torch.tensor([h["w_noise_scale"] for h in res.history], dtype=torch.float64)
    torch.testing.assert_close(scale, P["w_noise_scale"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.stack(res.trajectory["W"]), P["w_out"], atol=1e-4, rtol=1e-4)
    noise = {k[len("noise/"):]: v for k, v in res.latents.items() if k.startswith("noise/")}
    assert len(noise) == 7
    for layer, n in noise.items():
        torch.testing.assert_close(n, P[f"noise_final.synthesis.{layer}.noise_const"], atol=1e-4, rtol=1e-4)


def test_learning_rate_schedule_shape():
    cfg = ProjectorConfig(num_steps=1000)
    lrs = [learning_rate(s, cfg) for s in range(1000)]
    assert lrs[0] == 0 and max(lrs) == pytest.approx(0.1) and lrs[-1] < 1e-4
    assert lrs[25] == pytest.approx(0.05)  # half-way up the 5% ramp


def test_w_stats_are_cached_and_rms(G):
    w_avg, w_std = w_stats(G, 500, 1)
    z = torch.from_numpy(np.random.RandomState(1).randn(500, G.z_dim))
    w = G.mapping(z, None)[:, 0]
    torch.testing.assert_close(w_avg[0, 0], w.mean(0), atol=1e-5, rtol=1e-5)
    assert w_std == pytest.approx(float(((w - w.mean(0)) ** 2).sum(1).mean().sqrt()), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Reconstruction and restoration (tiny generator, tiny TorchScript VGG stand-in)

def test_clean_reconstruction_reaches_30_db(G, features, clean):
    pr = OfficialMethod(G, features, ProjectorConfig(num_steps=800, w_avg_samples=2000, snapshot_every=0))
    res = pr.restore(clean)
    image = torch.stack([r.image for r in res])
    assert (psnr_torch(image, clean) >= 30.0).all(), psnr_torch(image, clean)


RESTORE = ProjectorConfig(num_steps=300, w_avg_samples=2000, snapshot_every=0, noise_init="const",
                          optimize_noise=False)


@pytest.mark.parametrize("ops", [
    [{"type": "blur", "kernel": 9, "sigma": 2.0}],
    [{"type": "grayscale"}],
    [{"type": "mask"}],
    [{"type": "downsample", "factor": 4}],
], ids=["blur", "grayscale", "mask", "downsample"])
def test_restoration_beats_the_degraded_input(G, features, clean, ops):
    """The degraded result matches the degraded target (consistency >= 30 dB), and the result is
    closer to the clean image than the degraded target is (by >= 3 dB; a small observation is
    scaled up bilinearly to compare)."""
    d = Degradation(ops, 32, masks=centre_mask(32, 0.4) if ops[0]["type"] == "mask" else None)
    target = d.target(clean)
    res = OfficialMethod(G, features, RESTORE).restore(target, d)
    image = torch.stack([r.image for r in res])
    consistency = psnr_torch(d(image), target)
    baseline = target if target.shape == clean.shape else F.interpolate(target, size=clean.shape[-2:],
                                                                          mode="bilinear", align_corners=False)
    gain = psnr_torch(image, clean) - psnr_torch(baseline, clean)
    # an 8 px observation (4x of 32 px) is matched a little less closely by 300 steps
    assert (consistency >= (28.0 if target.shape[-1] < 32 else 30.0)).all(), consistency
    assert (gain >= 3.0).all(), gain
    torch.testing.assert_close(torch.stack([r.degraded for r in res]), d(image))


def test_saved_outputs_are_what_was_optimized(G, features, clean, tmp_path):
    pr = OfficialMethod(G, features, ProjectorConfig(num_steps=5, w_avg_samples=500, snapshot_every=0))
    (res,) = pr.restore(clean[:1])
    res.save(tmp_path / "face")
    out = tmp_path / "face"
    data = np.load(out / "latents.npz")
    ws = torch.from_numpy(data["ws"])[None]
    noise = {k[len("noise/"):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("noise/")}
    assert ws.shape == (1, 8, 64) and len(noise) == 7
    again = G.synthesis(ws, noise_mode="const", noise_inputs=noise)
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(out / "image.png")), to_uint8(again)[0])
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert len(rows) == 5 and set(rows[0]) >= {"step", "phase", "loss", "dist", "noise_reg", "latent_reg", "lr"}


def test_latent_distance_regularization_pulls_toward_w_avg(G, features, clean):
    far = ProjectorConfig(num_steps=60, w_avg_samples=500, snapshot_every=0)
    near = ProjectorConfig(num_steps=60, w_avg_samples=500, snapshot_every=0, latent_dist_reg_weight=1e4)
    a = OfficialMethod(G, features, far).restore(clean[:1])[0]
    pr = OfficialMethod(G, features, near)
    b = pr.restore(clean[:1])[0]
    w_avg = pr.w_avg.cpu()[0]
    assert (b.latents["ws"] - w_avg).norm() < 0.8 * (a.latents["ws"] - w_avg).norm()
    assert b.history[-1]["latent_reg"] > 0 and a.history[-1]["latent_reg"] == 0


# ---------------------------------------------------------------------------------------------
# Bad input: refused before any work

def test_bad_input_is_refused_before_work(G, features, clean):
    with pytest.raises(ValueError, match=r"targets must be \[B, 3, 32, 32\]"):
        OfficialMethod(G, features, ProjectorConfig(num_steps=1, w_avg_samples=100)).restore(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="initial_learning_rate"):
        ProjectorConfig(initial_learning_rate=float("inf"))
    with pytest.raises(ValueError, match="latent_space"):
        ProjectorConfig(latent_space="z")
    with pytest.raises(DegradationError, match="odd"):
        Degradation([{"type": "blur", "kernel": 8, "sigma": 2}], 32)
    with pytest.raises(DegradationError, match="not smaller than the 32 px"):
        Degradation([{"type": "blur", "kernel": 33, "sigma": 2}], 32)
    with pytest.raises(DegradationError, match="covers everything"):
        Degradation([{"type": "mask"}], 32, masks=torch.zeros(1, 1, 32, 32))
    with pytest.raises(DegradationError, match="covers nothing"):
        Degradation([{"type": "mask"}], 32, masks=torch.ones(1, 1, 32, 32))


def test_cli_project(golden_dir, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from recon.data.imageio import save_png
    G = recon.load_generator(golden_dir / "G_ema.safetensors")
    imgs = to_uint8(G(torch.randn(2, 64, generator=torch.Generator().manual_seed(0)), None, truncation_psi=0.5,
                      noise_mode="const"))
    for i, im in enumerate(imgs):
        save_png(tmp_path / "in" / f"f{i}.png", im)
    write_tiny_vgg(tmp_path / "vgg.pt")
    cmd = [sys.executable, "-m", "recon.cli", "project", str(tmp_path / "in"), "--generator",
           str(golden_dir / "official_format.pkl"), "--vgg", str(tmp_path / "vgg.pt"), "--out", str(tmp_path / "out"),
           "--steps", "5", "--degrade", "grayscale", "--batch", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    target = np.asarray(Image.open(tmp_path / "out" / "f0" / "target.png")).astype(int)
    assert (target[..., 0] == target[..., 2]).all()      # the degraded (gray) target was used
    assert len(list(csv.DictReader(open(tmp_path / "out" / "f1" / "loss.csv")))) == 5
    again = subprocess.run(cmd, capture_output=True, text=True)          # the same settings: nothing to do
    assert again.returncode == 0 and "projected 0 of 2 images" in again.stdout, again.stderr[-2000:]
    other = subprocess.run(cmd[:-4] + ["--steps", "6", "--batch", "2"], capture_output=True, text=True)
    assert other.returncode == 1 and "already holds a result made with other settings" in other.stderr
    assert "(add --force to replace it)" in other.stderr and "Traceback" not in other.stderr
    forced = subprocess.run(cmd[:-4] + ["--steps", "6", "--batch", "2", "--force"], capture_output=True, text=True)
    assert forced.returncode == 0 and len(list(csv.DictReader(open(tmp_path / "out" / "f1" / "loss.csv")))) == 6
