"""Stage functions: degrade writes 8-bit targets; project skips finished faces and resumes after a
failure without losing anything; bad targets are refused before work; metrics behave."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import recon
from recon.data.imageio import to_uint8
from recon.data.imageio import PhotoError, save_png
from recon.metrics import identity_distance, psnr, ssim
from recon.config import ProjectorConfig
from recon.pipeline.stages import aligned_faces, degrade_stage, project_stage
from recon.restore.official import Projector
from conftest import make_weights
from recon.model.weights import resolve_weights

CFG = dict(num_steps=6, w_avg_samples=200, snapshot_every=3)


@pytest.fixture()
def setup(tmp_path, golden_dir):
    weights = make_weights(tmp_path / "weights", golden_dir / "official_format.pkl")
    G = recon.load_generator(golden_dir / "official_format.pkl")
    g = torch.Generator().manual_seed(1)
    faces = to_uint8(G(torch.randn(3, 64, generator=g), None, truncation_psi=0.5, noise_mode="const"))
    aligned = tmp_path / "aligned"
    manifest = {"images": {}}
    for k, img in enumerate(faces):
        save_png(aligned / f"p{k}_0.png", img)
        manifest["images"][f"p{k}.png"] = {"faces": [{"file": f"p{k}_0.png", "quad": [[0, 0], [0, 9], [9, 9], [9, 0]]}]}
    (aligned / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path, weights, aligned


def test_degrade_writes_8bit_targets_and_masks(setup):
    tmp, _, aligned = setup
    t = degrade_stage("mask", {"type": "mask", "source": "center", "fraction": 0.5}, aligned_faces(aligned), tmp / "deg")
    assert [f["name"] for f in t["faces"]] == ["p0_0", "p1_0", "p2_0"]
    img = np.asarray(Image.open(tmp / "deg" / "p0_0.png"))
    mask = np.asarray(Image.open(tmp / "deg" / "p0_0_mask.png"))
    orig = np.asarray(Image.open(aligned / "p0_0.png"))
    assert img.dtype == np.uint8 and mask.shape == (32, 32)
    assert (mask[8:24, 8:24] == 255).all() and mask[0, 0] == 0   # white = missing
    assert np.array_equal(img[mask == 0], orig[mask == 0])
    assert not np.array_equal(img[mask == 255], orig[mask == 255])


def test_project_stage_skips_done_faces_and_resumes_after_failure(setup, monkeypatch):
    tmp, weights, aligned = setup
    degrade_stage("blur", {"type": "blur", "kernel": 5, "sigma": 1.0}, aligned_faces(aligned), tmp / "deg")
    cfg = ProjectorConfig(**CFG)
    out = tmp / "proj"

    real = Projector.project
    calls = {"n": 0}

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        return real(self, *a, **k)
    monkeypatch.setattr(Projector, "project", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        project_stage("blur", cfg, tmp / "deg", out, weights, batch_size=1, device="cpu")
    first = out / "p0_0"
    assert (first / "done.json").is_file()
    assert sorted(p.name for p in (first / "progress").iterdir()) == ["step00003.png"]
    stamp = (first / "image.png").stat().st_mtime_ns
    monkeypatch.setattr(Projector, "project", real)

    done = project_stage("blur", cfg, tmp / "deg", out, weights, batch_size=1, device="cpu")
    assert done == ["p1_0", "p2_0"]
    assert (first / "image.png").stat().st_mtime_ns == stamp
    assert project_stage("blur", cfg, tmp / "deg", out, weights, batch_size=1, device="cpu") == []
    # a changed setting invalidates every face
    assert len(project_stage("blur", ProjectorConfig(**dict(CFG, num_steps=7)), tmp / "deg", out, weights,
                             batch_size=3, device="cpu")) == 3
    # a face that is no longer a target is removed
    t = json.loads((tmp / "deg" / "targets.json").read_text())
    t["faces"] = t["faces"][:2]
    (tmp / "deg" / "targets.json").write_text(json.dumps(t))
    project_stage("blur", ProjectorConfig(**dict(CFG, num_steps=7)), tmp / "deg", out, weights, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == ["p0_0", "p1_0"]


def test_project_stage_refuses_bad_targets_before_work(setup):
    tmp, weights, aligned = setup
    degrade_stage("none", {"type": "none"}, aligned_faces(aligned), tmp / "deg")
    big = np.zeros((64, 64, 3), np.uint8)
    save_png(tmp / "deg" / "p1_0.png", big)
    with pytest.raises(ValueError, match=r"p1_0\.png: target is 64x64, the generator makes 32x32 "):
        project_stage("none", ProjectorConfig(**CFG), tmp / "deg", tmp / "proj", weights, device="cpu")
    (tmp / "deg" / "p1_0.png").write_bytes(b"garbage")
    with pytest.raises(PhotoError, match=r"p1_0\.png"):
        project_stage("none", ProjectorConfig(**CFG), tmp / "deg", tmp / "proj", weights, device="cpu")
    assert not any((tmp / "proj").glob("*/done.json"))


def test_ssim_and_psnr():
    rng = np.random.RandomState(0)
    texture = (rng.rand(64, 64, 3) * 255).astype(np.uint8)
    assert ssim(texture, texture) == pytest.approx(1.0) and psnr(texture, texture) == float("inf")
    noisy = np.clip(texture + rng.randn(*texture.shape) * 20, 0, 255).astype(np.uint8)
    # SSIM of signal variance s2 plus noise variance n2 is about 2 s2 / (2 s2 + n2): ~0.96 here
    assert ssim(texture, noisy) == pytest.approx(2 * 5419 / (2 * 5419 + 400), abs=0.02)
    assert psnr(texture, noisy) == pytest.approx(22.2, abs=1.0)
    smooth = np.repeat(np.linspace(60, 200, 64)[None, :, None], 64, 0).repeat(3, 2).astype(np.uint8)
    noisy_smooth = np.clip(smooth + rng.randn(*smooth.shape) * 20, 0, 255).astype(np.uint8)
    assert ssim(smooth, noisy_smooth) < 0.3


def test_identity_distance_separates_people(golden_dir):
    from conftest import SHARED, need
    g = need(SHARED / "golden" / "align")
    hopper = np.asarray(Image.open(g / "grace_hopper_0.png").convert("RGB"))
    luciano = np.asarray(Image.open(g / "luciano_0.png").convert("RGB"))
    blurred = np.asarray(Image.fromarray(hopper).resize((256, 256)).resize((1024, 1024)))
    assert identity_distance(hopper, blurred) < 0.4
    assert identity_distance(hopper, luciano) > 0.6


def test_composites_keep_what_the_input_knows():
    from recon.restore.composite import paste_known, transfer_luminance
    rng = np.random.RandomState(0)
    original = (rng.rand(64, 64, 3) * 255).astype(np.uint8)
    generated = (rng.rand(64, 64, 3) * 255).astype(np.uint8)
    hole = np.zeros((64, 64), bool)
    hole[16:48, 16:48] = True
    out = paste_known(generated, original, hole)
    assert np.array_equal(out[~hole], original[~hole])
    assert np.array_equal(out[20:44, 20:44], generated[20:44, 20:44])  # past the 1-2 px ramp
    gray = np.repeat((original.astype(float) @ [0.299, 0.587, 0.114]).round()[..., None], 3, 2).astype(np.uint8)
    colour = transfer_luminance(generated, gray)
    y = colour.astype(float) @ [0.299, 0.587, 0.114]
    inside = (colour > 0).all(-1) & (colour < 255).all(-1)        # where nothing was clipped
    assert np.abs(y - gray[..., 0])[inside].max() <= 1.0
    assert inside.mean() > 0.5


def test_cli_and_pipeline_give_the_same_result(setup):
    """`recon project` runs the stage's own functions: the same settings give the same bytes."""
    import subprocess
    import sys
    from ruamel.yaml import YAML
    from conftest import ROOT
    tmp, weights, aligned = setup
    params = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    params["align"]["resolution"] = 32
    params["degrade"]["blur"] = {"type": "blur", "kernel": 5, "sigma": 1.0}
    params["project"]["default"].update(CFG)
    with open(tmp / "params.yaml", "w") as f:
        YAML().dump(params, f)
    from recon.config import load_params
    p = load_params(tmp / "params.yaml")
    files = resolve_weights(weights)
    degrade_stage("blur", p.ops("blur"), aligned_faces(aligned), tmp / "deg")
    project_stage("blur", p.project.for_mode("blur"), tmp / "deg", tmp / "pipe", weights, 1, "cpu")
    res = subprocess.run([sys.executable, "-m", "recon.cli", "project", *sorted(str(f) for f in aligned.glob("*.png")),
                          "--generator", str(files.generator), "--vgg", str(files.vgg16),
                          "--out", str(tmp / "cli"), "--params", str(tmp / "params.yaml"), "--degrade", "blur",
                          "--device", "cpu"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("p0_0", "p1_0", "p2_0"):
        for f in ("image.png", "degraded.png", "target.png", "loss.csv"):
            assert (tmp / "pipe" / name / f).read_bytes() == (tmp / "cli" / name / f).read_bytes(), (name, f)
        a, b = np.load(tmp / "pipe" / name / "latents.npz"), np.load(tmp / "cli" / name / "latents.npz")
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_robust_method_through_the_project_stage(setup):
    import csv
    from recon.config import RobustConfig
    tmp, weights, aligned = setup
    degrade_stage("blur", {"type": "blur", "kernel": 5, "sigma": 1.0}, aligned_faces(aligned), tmp / "deg")
    cfg = ProjectorConfig(method="robust", robust=RobustConfig(steps=[3, 3, 3], min_loss_res=4))
    done = project_stage("blur", cfg, tmp / "deg", tmp / "proj", weights, batch_size=2, device="cpu")
    assert done == ["p0_0", "p1_0", "p2_0"]
    out = tmp / "proj" / "p0_0"
    for name in ("image.png", "image_W.png", "image_W+.png", "degraded.png", "target.png", "done.json"):
        assert (out / name).is_file(), name
    G = recon.load_generator(resolve_weights(weights).generator)
    assert np.load(out / "latents.npz")["wpp"].shape == (G.num_ws, G.synthesis.max_channels, G.w_dim)
    rows = list(csv.DictReader(open(out / "loss.csv")))
    assert [r["phase"] for r in rows] == ["W"] * 3 + ["W+"] * 3 + ["W++"] * 3
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # the saved image is the final W++ image, rendered again from the saved latent
    img = (G.synthesis(torch.from_numpy(np.load(out / "latents.npz")["wpp"])[None], noise_mode="const") + 1) / 2
    assert np.abs(np.asarray(Image.open(out / "image.png")).astype(int)
                  - to_uint8(img * 2 - 1)[0].astype(int)).max() <= 1
    # settings of the official projector do not touch a robust result; its own do
    assert project_stage("blur", cfg.model_copy(update=dict(num_steps=7)), tmp / "deg", tmp / "proj", weights,
                         device="cpu") == []


def test_lpips_metric(setup):
    from recon.metrics import LPIPSMetric
    _, weights, aligned = setup
    lpips = LPIPSMetric(resolve_weights(weights).vgg16)
    face = np.asarray(Image.open(aligned / "p0_0.png"))
    rng = np.random.RandomState(0)
    noisy = [np.clip(face + rng.randn(*face.shape) * s, 0, 255).astype(np.uint8) for s in (5, 40)]
    assert lpips(face, face) == 0.0
    assert 0 < lpips(face, noisy[0]) < lpips(face, noisy[1])


def test_brush_masks_per_face_and_repeatable(setup):
    tmp, _, aligned = setup
    faces = aligned_faces(aligned)
    degrade_stage("mask", {"type": "mask", "source": "brush", "strokes": 3}, faces, tmp / "a", seed=7)
    degrade_stage("mask", {"type": "mask", "source": "brush", "strokes": 3}, faces, tmp / "b", seed=7)
    masks = [np.asarray(Image.open(tmp / "a" / f"{f['name']}_mask.png")) for f in faces]
    assert all(np.array_equal(m, np.asarray(Image.open(tmp / "b" / f"{f['name']}_mask.png")))
               for m, f in zip(masks, faces))
    assert not np.array_equal(masks[0], masks[1])
    assert all(0 < (m == 255).mean() < 0.9 for m in masks)


def test_init_from_another_mode_and_from_a_file(setup, tmp_path):
    """``init: <mode>`` starts each face from that mode's result (refine, or restore from a
    reconstruction); ``init: <file>.npz`` starts every face from one latent; a missing source is
    named; a changed source invalidates the result."""
    from recon.config import RobustConfig
    from recon.errors import MissingInputError
    from recon.pipeline.stages import read_init
    tmp, weights, aligned = setup
    faces = aligned_faces(aligned)
    degrade_stage("none", {"type": "none"}, faces, tmp / "deg" / "none")
    degrade_stage("blur", {"type": "blur", "kernel": 5, "sigma": 1.0}, faces, tmp / "deg" / "blur")
    proj = tmp / "projected"
    official = ProjectorConfig(**CFG)
    robust = ProjectorConfig(method="robust", robust=RobustConfig(steps=[2, 2, 2], min_loss_res=4), init="none")
    with pytest.raises(MissingInputError, match=r"none/p0_0/latents.npz: starting latents not found "
                                                r"\(run `dvc repro project@none` first\)"):
        project_stage("blur", robust, tmp / "deg" / "blur", proj / "blur", weights, device="cpu")
    assert not (proj / "blur").exists() or not any((proj / "blur").glob("*/done.json"))
    project_stage("none", official, tmp / "deg" / "none", proj / "none", weights, device="cpu")
    project_stage("blur", robust, tmp / "deg" / "blur", proj / "blur", weights, device="cpu")
    G = recon.load_generator(resolve_weights(weights).generator)
    for face in ("p0_0", "p2_0"):
        start = read_init(proj / "none" / face / "latents.npz", "robust", G)
        assert start.ndim == 1                       # the official W-space result: a W start
        with np.load(proj / "blur" / face / "latents.npz") as z:
            w = torch.from_numpy(z["w"])
        # the W phase ran 2 NGD steps of 0.08 from the reconstruction, not from w_avg
        assert 0 < float((w - start).norm()) <= 0.16 + 1e-5
        assert float((w - G.mapping.w_avg).norm()) > 0.5
    # a new reconstruction makes the restoration stale; an unchanged one does not
    assert project_stage("blur", robust, tmp / "deg" / "blur", proj / "blur", weights, device="cpu") == []
    project_stage("none", official.model_copy(update=dict(num_steps=7)), tmp / "deg" / "none", proj / "none",
                  weights, device="cpu")
    assert len(project_stage("blur", robust, tmp / "deg" / "blur", proj / "blur", weights, device="cpu")) == 3

    # one file for every face, and the official projector starting from a robust result's W+
    refine = official.model_copy(update=dict(init=str(proj / "blur" / "p1_0" / "latents.npz"), latent_space="w+"))
    project_stage("blur", refine, tmp / "deg" / "blur", tmp / "refined", weights, device="cpu")
    with np.load(proj / "blur" / "p1_0" / "latents.npz") as z:
        wp = torch.from_numpy(z["wp"])
    for face in ("p0_0", "p1_0"):
        ws = torch.from_numpy(np.load(tmp / "refined" / face / "latents.npz")["ws"])
        assert float((ws - wp).abs().max()) < 1.0 and float((ws - wp).abs().max()) > 0
    with pytest.raises(ValueError, match="use latent_space: w\\+"):
        project_stage("blur", official.model_copy(update=dict(init=refine.init)), tmp / "deg" / "blur",
                      tmp / "refined_w", weights, device="cpu")
    bad = tmp / "bad.npz"
    np.savez(bad, ws=np.zeros((3, 5), np.float32))
    from recon.errors import ParamsError
    with pytest.raises(ParamsError, match=r"bad.npz: ws must be finite and \[\d+, 64\]"):
        project_stage("blur", official.model_copy(update=dict(init=str(bad))), tmp / "deg" / "blur",
                      tmp / "refined_bad", weights, device="cpu")


def test_compile_auto_follows_the_generator_and_the_run_length(setup, monkeypatch, capsys):
    """``compile: auto`` decides from the loaded generator's resolution and the run's steps (the
    thresholds lowered here to the tiny generator and a short run); a compiled run says so."""
    import recon.compiled as compiled
    tmp, weights, aligned = setup
    degrade_stage("blur", {"type": "blur", "kernel": 5, "sigma": 1.0}, aligned_faces(aligned), tmp / "deg")
    compiles = []

    def fake_compile(fn, **kw):
        compiles.append(kw)
        return fn
    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = ProjectorConfig(**CFG)
    project_stage("blur", cfg, tmp / "deg", tmp / "a", weights, batch_size=3, device="cpu", compile="auto")
    assert compiles == [] and "compiling" not in capsys.readouterr().err      # 32 px, 6 steps: eager
    monkeypatch.setattr(compiled, "CPU_MIN_RESOLUTION", 32)
    monkeypatch.setattr(compiled, "CPU_MIN_STEPS", 6)
    project_stage("blur", cfg, tmp / "deg", tmp / "b", weights, batch_size=3, device="cpu", compile="auto")
    assert compiles == [dict(dynamic=False, mode=None)]
    assert "project blur: compiling the projection step (project.runtime.compile: auto)" in capsys.readouterr().err
    monkeypatch.setattr(compiled, "CPU_MIN_STEPS", 7)
    project_stage("blur", cfg, tmp / "deg", tmp / "c", weights, batch_size=3, device="cpu", compile="auto")
    assert len(compiles) == 1
