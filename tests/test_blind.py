"""Restoring a photo whose degradation nobody knows: a blur's sigma estimated with the face (every
method, through the restoration contract: bounded, with gradients, deterministic, independent of
the batch, resumed exactly, close to the truth), the observation's size found from the alignment,
grayscale detected, and the stage running faces of different sizes in batches of their own."""
import json

import numpy as np
import pytest
import torch
from conftest import FACES, GOLDEN_ALIGN

from recon.config import AutoOp, BlurOp, DownsampleOp, ProjectorConfig, RobustConfig, parse_op
from recon.restore import make_method
from recon.restore.degrade import Degradation, DegradationError
from recon.restore.estimate import Estimates
from recon.restore.randomness import TorchRandom

SETTINGS = {
    "official": dict(num_steps=60, w_avg_samples=500, snapshot_every=20, noise_init="const", optimize_noise=False),
    "robust": dict(method="robust", num_steps=60, robust=RobustConfig(min_loss_res=4), snapshot_every=20),
}
AUTO = BlurOp(sigma="auto", sigma_range=[0.3, 4.0], kernel=15)


@pytest.fixture(scope="module")
def clean(G):
    g = torch.Generator().manual_seed(5)
    return G.synthesis(G.mapping(torch.randn(4, G.z_dim, generator=g), None, truncation_psi=0.5),
                       noise_mode="const").detach()


def blurred(clean, sigma):
    return Degradation([BlurOp(kernel=15, sigma=sigma)], 32).target(clean)


def test_sigma_stays_in_its_range_and_gets_gradients():
    d = Degradation([AUTO], 32)
    assert d.unknowns == [("sigma", 0, "sigma", 0.3, 4.0)]
    est = Estimates(d, 3, "cpu")
    torch.testing.assert_close(est.values()["sigma"], torch.full((3,), (0.3 * 4.0) ** 0.5))    # the middle
    with torch.no_grad():
        est.raw["sigma"].copy_(torch.tensor([-1e4, 0.0, 1e4]))
    v = est.values()["sigma"].detach()
    assert v[0] == pytest.approx(0.3) and v[2] == pytest.approx(4.0)      # bounded, whatever the raw value
    with torch.no_grad():
        est.raw["sigma"].zero_()
    img = torch.rand(3, 3, 32, 32) * 2 - 1
    target = Degradation([BlurOp(kernel=15, sigma=3.0)], 32).target(img)
    (d(img, params=est.params()) - target).square().sum().backward()
    g = est.raw["sigma"].grad
    assert g is not None and (g < 0).all()              # the estimate (1.1) is below the truth (3): grow it
    with pytest.raises(DegradationError, match="sigma auto needs each target's estimate"):
        d(img)
    with pytest.raises(DegradationError, match="sigma auto needs each target's estimate"):
        d.target(img)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_estimate_converges_to_the_true_sigma(G, vgg, clean, name):
    """Four faces of the tests' generator blurred with sigma 1, 2 and 3 px: the estimates land
    within 8 % of the truth (measured: within 1-5 %)."""
    for true in (1.0, 2.0, 3.0):
        res = make_method(G, vgg, ProjectorConfig(**dict(SETTINGS[name], num_steps=300))).restore(
            blurred(clean, true), Degradation([AUTO], 32))
        found = np.array([r.estimates["sigma"] for r in res])
        assert np.abs(found / true - 1).max() < 0.08, (true, found)
        assert all(r.latents["estimate/sigma"].item() == pytest.approx(r.estimates["sigma"]) for r in res)
        assert "sigma" in res[0].history[-1] and res[0].history[-1]["sigma"] == pytest.approx(res[0].estimates["sigma"],
                                                                                             rel=0.05)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_blind_run_is_deterministic_independent_of_its_batch_and_resumes_exactly(G, vgg, clean, name, tmp_path):
    cfg = ProjectorConfig(**SETTINGS[name])
    target, d = blurred(clean[:3], 2.0), Degradation([AUTO], 32)
    m = make_method(G, vgg, cfg)
    whole = m.restore(target, d, rngs=[TorchRandom(k) for k in range(3)])
    again = m.restore(target, d, rngs=[TorchRandom(k) for k in range(3)])
    alone = m.restore(target[1:2], d, rngs=[TorchRandom(1)])
    assert [r.estimates for r in whole] == [r.estimates for r in again]
    # batched convolutions round differently (~1e-6), as for every method (tests/test_methods.py)
    assert alone[0].estimates["sigma"] == pytest.approx(whole[1].estimates["sigma"], abs=1e-4)
    torch.testing.assert_close(alone[0].image, whole[1].image, atol=1e-3, rtol=1e-3)

    class Stop(Exception):
        pass

    def stop(step, images):
        if step == 40:
            raise Stop
    snap = tmp_path / "snap.pt"
    with pytest.raises(Stop):
        m.restore(target, d, rngs=[TorchRandom(k) for k in range(3)], snapshot_path=snap, on_snapshot=stop)
    assert torch.load(snap, weights_only=True)["estimates"] is not None
    resumed = m.restore(target, d, rngs=[TorchRandom(k) for k in range(3)], snapshot_path=snap)
    assert [r.estimates for r in resumed] == [r.estimates for r in whole]
    assert all(torch.equal(a.image, b.image) for a, b in zip(resumed, whole))
    assert [h["sigma"] for h in resumed[0].history] == [h["sigma"] for h in whole[0].history]


def test_samples_and_tuning_estimate_too(G, vgg, clean):
    cfg = ProjectorConfig(**dict(SETTINGS["robust"], num_steps=30, samples=2, snapshot_every=0))
    (res,) = make_method(G, vgg, cfg).restore(blurred(clean[:1], 2.0), Degradation([AUTO], 32))
    assert 0.3 <= res.estimates["sigma"] <= 4.0
    cfg = ProjectorConfig(**dict(SETTINGS["robust"], num_steps=20, snapshot_every=0, tune=dict(steps=4)))
    (tuned,) = make_method(G, vgg, cfg).restore(blurred(clean[:1], 2.0), Degradation([AUTO], 32))
    assert [h["phase"] for h in tuned.history][-1] == "tune" and "sigma" in tuned.history[-1]


# ----------------------------------------------------------------------------------------------
# What the alignment and the photo tell

def test_the_observation_size_is_the_faces_own_sampling():
    from recon.pipeline.degrade import observation_size, quad_side
    assert quad_side([[0, 0], [0, 100], [100, 100], [100, 0]]) == 100
    assert [observation_size(s, 1024) for s in (30, 61, 100, 120, 127.4, 128, 200, 2000)] == \
        [32, 64, 64, 128, 128, 128, 128, 1024]
    assert observation_size(None, 256) == 256 and observation_size(3000, 256) == 256


def test_the_factor_found_from_a_small_face_is_the_one_it_was_made_with(tmp_path):
    """A face of the fixtures pasted 128 px small into a larger photo, aligned for a 1024 px
    generator: its crop covers ~128 photo pixels, so its observation is 128 px, factor 8."""
    from PIL import Image

    from recon.config import Align
    from recon.data.align import align_paths
    from recon.pipeline.degrade import observation_size, quad_side
    face = Image.open(GOLDEN_ALIGN / "obama_0.png").convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    photo = Image.new("RGB", (480, 360), (128, 120, 110))
    photo.paste(face, (200, 90))
    photo.save(tmp_path / "small.png")
    manifest = align_paths([tmp_path / "small.png"], tmp_path / "aligned", Align(), progress=False)
    (found,) = manifest["images"]["small.png"]["faces"]
    side = quad_side(found["quad"])
    assert abs(side - 128) < 128 * 0.08, side
    assert observation_size(side, 1024) == 128 and 1024 // observation_size(side, 1024) == 8


@pytest.mark.parametrize("photo,gray", [("gray_portrait_0.png", True), ("obama_0.png", False),
                                        ("tiny_bryan_0.png", False), ("luciano_0.png", False)])
def test_grayscale_is_detected_where_the_channels_agree(photo, gray):
    from recon.data.imageio import load_photo
    from recon.pipeline.degrade import resolve_ops
    rgb, _ = load_photo(GOLDEN_ALIGN / photo)
    ops, detected = resolve_ops([AutoOp(sigma_range=[0.3, 12.0])], rgb, [[0, 0], [0, 300], [300, 300], [300, 0]], 1024)
    assert detected["grayscale"] is gray and [op.type for op in ops] == (
        ["blur", "grayscale", "downsample"] if gray else ["blur", "downsample"])
    assert detected["factor"] == 4 and ops[-1].factor == 4 and ops[0].sigma == "auto" and ops[0].kernel == 73


def test_a_gray_photo_saved_as_colour_jpeg_is_still_gray(tmp_path):
    """A gray photo through a 4:2:0 colour JPEG (chroma noise of a level or two) counts as gray."""
    from PIL import Image

    from recon.data.imageio import load_photo
    from recon.pipeline.degrade import channel_spread
    Image.open(FACES / "gray_portrait.jpg").convert("RGB").save(tmp_path / "g.jpg", quality=75)
    rgb, _ = load_photo(tmp_path / "g.jpg")
    assert channel_spread(rgb) <= AutoOp().grayscale_tolerance


def test_observed_auto_modes_resolve_per_face_and_run_in_batches_of_their_own_size(G, tmp_path, golden_dir):
    """Faces of different sizes in their photos: each target at its own sampling, each face's ops
    recorded, batches cut per size; the receipts record the sigma found."""
    from conftest import make_weights

    from recon.data.imageio import save_png, to_uint8
    from recon.pipeline.degrade import degrade_stage
    from recon.pipeline.project import project_stage
    from recon.pipeline.records import Face, Targets
    weights = make_weights(tmp_path / "weights", golden_dir / "official_format.pkl")
    faces = to_uint8(G(torch.randn(3, 64, generator=torch.Generator().manual_seed(3)), None, truncation_psi=0.5,
                       noise_mode="const"))
    records = []
    for k, (img, side) in enumerate(zip(faces, (9.0, 40.0, 15.0))):     # 8 px, 32 px and 16 px observations
        save_png(tmp_path / "aligned" / f"f{k}_0.png", img)
        quad = [[0, 0], [0, side], [side, side], [side, 0]]
        records.append(Face(f"f{k}_0", str(tmp_path / "aligned" / f"f{k}_0.png"), f"f{k}.png", quad=quad))
    op = parse_op({"type": "auto", "sigma_range": [0.3, 4.0]})
    with pytest.raises(DegradationError, match="type: auto is for photos that are already degraded"):
        degrade_stage("old", [op], records, tmp_path / "nope")
    t = degrade_stage("old", [op], records, tmp_path / "deg", observed=True)
    assert [f.detected["observation"] for f in t.faces] == [8, 32, 16]
    assert [[o["type"] for o in f.ops] for f in t.faces] == [["blur", "downsample"], ["blur"], ["blur", "downsample"]]
    assert Targets.load(tmp_path / "deg").faces[0].ops[1] == {"type": "downsample", "factor": 4, "filter": "box"}
    from recon.data.imageio import load_photo
    assert [load_photo(tmp_path / "deg" / f"f{k}_0.png")[0].shape[0] for k in range(3)] == [8, 32, 16]
    cfg = ProjectorConfig(**dict(SETTINGS["robust"], num_steps=6, robust=RobustConfig(min_loss_res=2),
                                 snapshot_every=0))
    from recon.config import Runtime
    done = project_stage("old", cfg, tmp_path / "deg", tmp_path / "out", weights, Runtime(batch_size=2, compile="off"))
    assert sorted(done) == ["f0_0", "f1_0", "f2_0"]
    plan = json.loads((tmp_path / "out" / ".work" / "plan.json").read_text())
    assert [u["data"]["faces"] for u in plan["units"]] == [["f0_0"], ["f1_0"], ["f2_0"]]   # a size per batch
    for k in range(3):
        receipt = json.loads((tmp_path / "out" / f"f{k}_0" / "done.json").read_text())
        assert 0.3 <= receipt["estimates"]["sigma"] <= 4.0


def test_an_estimated_parameter_is_for_observed_modes_only():
    from recon.config import parse_params
    from recon.errors import ParamsError
    with pytest.raises(ParamsError, match=r"degrade.b: sigma: auto is for a photo that is already degraded"):
        parse_params({"degrade": {"b": {"type": "blur", "sigma": "auto", "sigma_range": [0.3, 4]}},
                      "align": {"resolution": 32}})
    with pytest.raises(ParamsError, match=r"degrade.s: factor: auto is for a photo"):
        parse_params({"degrade": {"s": {"type": "downsample", "factor": "auto"}}})
    p = parse_params({"degrade": {"s": {"type": "chain", "ops": [{"type": "blur", "sigma": "auto"},
                                                                 {"type": "downsample", "factor": "auto"}],
                                        "observed": True}}, "project": {"s": {}, "starts": {"s": "data/degraded/s"}}})
    assert [op.type for op in p.ops("s")] == ["blur", "downsample"]
    with pytest.raises(ParamsError, match=r"degrade.b.sigma_range: is for sigma: auto"):
        parse_params({"degrade": {"b": {"type": "blur", "sigma": 2.0, "sigma_range": [0.3, 4]}}})
    with pytest.raises(ParamsError, match=r"kernel 73 is not smaller than the 32 px image \(sigma auto up to 12 px "):
        parse_params({"degrade": {"b": {"type": "blur", "sigma": "auto", "observed": True}},
                      "align": {"resolution": 32}})
    assert DownsampleOp(factor="auto").factor == "auto"
