"""Stage functions: degrade writes 8-bit targets and skips faces it cannot use; project skips only
the faces its receipts vouch for, redoes damaged ones to the same bytes, resumes after a failure,
keeps only the current run's progress images, and refuses bad targets and starting latents before
any model loads; the command line gives the pipeline's bytes; metrics behave."""
import csv
import json
import re

import numpy as np
import pytest
import torch
from conftest import make_weights
from PIL import Image

import recon
from recon.config import ProjectorConfig, RobustConfig
from recon.data.imageio import PhotoError, save_png, to_uint8
from recon.errors import MissingInputError, ParamsError
from recon.metrics import identity_distance, psnr, ssim
from recon.model.weights import resolve_weights
from recon.pipeline.degrade import degrade_stage
from recon.pipeline.project import project_stage
from recon.pipeline.records import Targets, aligned_faces
from recon.restore.degrade import parse_ops
from recon.restore.method import Method

CFG = dict(num_steps=6, w_avg_samples=200, snapshot_every=3)


def ops(*specs):
    return parse_ops(list(specs))


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


def digests(folder):
    import hashlib
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".work" not in p.parts}


def test_degrade_writes_8bit_targets_and_masks(setup):
    tmp, _, aligned = setup
    t = degrade_stage("mask", ops({"type": "mask", "source": "center", "fraction": 0.5}), aligned_faces(aligned),
                      tmp / "deg")
    assert [f.name for f in t.faces] == ["p0_0", "p1_0", "p2_0"] and Targets.load(tmp / "deg") == t
    img = np.asarray(Image.open(tmp / "deg" / "p0_0.png"))
    mask = np.asarray(Image.open(tmp / "deg" / "p0_0_mask.png"))
    orig = np.asarray(Image.open(aligned / "p0_0.png"))
    assert img.dtype == np.uint8 and mask.shape == (32, 32)
    assert (mask[8:24, 8:24] == 255).all() and mask[0, 0] == 0   # white = missing
    assert np.array_equal(img[mask == 0], orig[mask == 0])
    assert not np.array_equal(img[mask == 255], orig[mask == 255])


def test_faces_a_mode_cannot_use_are_skipped_and_listed(setup, capfd):
    """A face without the mask colour, without its mask file, or unreadable is skipped with a
    warning and listed in targets.json; a mode with no usable face says so and has nothing to do
    (it does not stop the run), and its project stage restores nothing."""
    tmp, _, aligned = setup
    faces = aligned_faces(aligned)
    painted = np.asarray(Image.open(faces[1].file)).copy()
    painted[4:12, 4:12] = [0, 255, 0]
    save_png(faces[1].file, painted)
    color = ops({"type": "mask", "source": "color", "color": [0, 255, 0], "tolerance": 0})
    t = degrade_stage("green", color, faces, tmp / "green")
    assert [f.name for f in t.faces] == ["p1_0"]
    assert [s["name"] for s in t.skipped] == ["p0_0", "p2_0"] and "covers nothing" in t.skipped[0]["reason"]
    assert "degrade green: warning: p0_0 skipped: " in capfd.readouterr().err
    assert json.loads((tmp / "green" / "targets.json").read_text())["skipped"] == t.skipped
    capfd.readouterr()
    empty = degrade_stage("file", ops({"type": "mask", "source": "file"}), faces, tmp / "file")
    assert empty.faces == [] and len(empty.skipped) == 3
    assert ("degrade file: warning: no face can be a target of this mode (p0_0: p0.png: the mask source is file, but "
            "the photo has no <stem>_mask.png") in capfd.readouterr().err
    from recon.pipeline.project import project_stage
    assert project_stage("file", ProjectorConfig(**CFG), tmp / "file", tmp / "file-out", setup[1]) == []
    assert [p.name for p in (tmp / "file-out").iterdir() if not p.name.startswith(".")] == []
    (aligned / "p2_0.png").write_bytes(b"not a png")
    t = degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), faces, tmp / "blur")
    assert [f.name for f in t.faces] == ["p0_0", "p1_0"] and "not an image" in t.skipped[0]["reason"]


def test_project_stage_skips_done_faces_and_resumes_after_failure(setup, monkeypatch):
    tmp, weights, aligned = setup
    degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), aligned_faces(aligned), tmp / "deg")
    cfg = ProjectorConfig(**CFG)
    out = tmp / "proj"

    real = Method.restore
    calls = {"n": 0}

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        return real(self, *a, **k)
    monkeypatch.setattr(Method, "restore", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        project_stage("blur", cfg, tmp / "deg", out, weights)
    first = out / "p0_0"
    receipt = json.loads((first / "done.json").read_text())
    assert set(receipt["files"]) == {"image.png", "degraded.png", "latents.npz", "loss.csv", "target.png"}
    assert sorted(p.name for p in (first / "progress").iterdir()) == ["step00003.png"]
    stamp = (first / "image.png").stat().st_mtime_ns
    monkeypatch.setattr(Method, "restore", real)

    done = project_stage("blur", cfg, tmp / "deg", out, weights)
    assert done == ["p1_0", "p2_0"]
    assert (first / "image.png").stat().st_mtime_ns == stamp
    assert project_stage("blur", cfg, tmp / "deg", out, weights) == []
    # a changed setting invalidates every face
    from recon.config import Runtime
    assert len(project_stage("blur", ProjectorConfig(**dict(CFG, num_steps=7)), tmp / "deg", out, weights,
                             Runtime(batch_size=3, compile="off"))) == 3
    # so does the precision (the one runtime setting results depend on), recorded in the receipt
    from recon.restore.precision import cpu_has_bf16
    if cpu_has_bf16():
        assert len(project_stage("blur", ProjectorConfig(**dict(CFG, num_steps=7)), tmp / "deg", out, weights,
                                 Runtime(batch_size=3, compile="off", precision="bf16"))) == 3
        assert json.loads((first / "done.json").read_text())["precision"] == "bf16"
    # a face that is no longer a target is removed
    t = json.loads((tmp / "deg" / "targets.json").read_text())
    t["faces"] = t["faces"][:2]
    (tmp / "deg" / "targets.json").write_text(json.dumps(t))
    project_stage("blur", ProjectorConfig(**dict(CFG, num_steps=7)), tmp / "deg", out, weights)
    assert sorted(p.name for p in out.iterdir()) == [".work", "p0_0", "p1_0"]


@pytest.mark.parametrize("damage", ["truncate latents.npz", "swap image.png", "delete loss.csv",
                                    "truncate done.json", "garble done.json"])
def test_a_damaged_result_is_redone_to_the_same_bytes(setup, damage, capfd):
    """Finished faces are trusted only when their receipt vouches for every file: damaging any
    output of a finished face makes that face (only) be written again, to the bytes of an
    undamaged run (its batch is recomputed whole: a face's bits depend on its companions)."""
    from recon.config import Runtime
    batched = Runtime(batch_size=3, compile="off")
    tmp, weights, aligned = setup
    degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), aligned_faces(aligned), tmp / "deg")
    cfg = ProjectorConfig(**CFG)
    out = tmp / "proj"
    project_stage("blur", cfg, tmp / "deg", out, weights, batched)
    good = digests(out)
    what, name = damage.split()
    path = out / "p1_0" / name
    if what == "truncate":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif what == "swap":
        path.write_bytes((out / "p2_0" / name).read_bytes())
    elif what == "delete":
        path.unlink()
    else:
        path.write_text("{not json")
    capfd.readouterr()
    assert project_stage("blur", cfg, tmp / "deg", out, weights, batched) == ["p1_0"]
    err = capfd.readouterr().err
    assert f"project blur: p1_0 runs again: {out / 'p1_0'}: " in err
    assert {"truncate latents.npz": "latents.npz differs from what done.json recorded",
            "swap image.png": "image.png differs", "delete loss.csv": "loss.csv is missing",
            "truncate done.json": "done.json is unreadable", "garble done.json": "done.json is unreadable"}[damage] in err
    assert digests(out) == good


def test_the_batches_are_cut_once_per_stage(setup):
    """The batch size is recorded with the stage's work: while any of it is left, a worker given
    another batch size is refused (the faces are never cut twice); ``auto`` adopts the recorded one."""
    from recon.config import Runtime
    tmp, weights, aligned = setup
    degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), aligned_faces(aligned), tmp / "deg")
    cfg, out = ProjectorConfig(**CFG), tmp / "proj"
    assert project_stage("blur", cfg, tmp / "deg", out, weights, Runtime(batch_size=2, compile="off")) == \
        ["p0_0", "p1_0", "p2_0"]
    plan = json.loads((out / ".work" / "plan.json").read_text())
    assert plan["meta"] == {"batch_size": 2} and [u["data"]["faces"] for u in plan["units"]] == \
        [["p0_0", "p1_0"], ["p2_0"]]
    assert project_stage("blur", cfg, tmp / "deg", out, weights, Runtime(batch_size=3, compile="off")) == []
    (out / "p2_0" / "loss.csv").unlink()                         # work is left: batch 3 would cut it again
    with pytest.raises(ParamsError, match=r"project.runtime.batch_size: 3, but this stage's work was planned in "
                                          r"batches of 2"):
        project_stage("blur", cfg, tmp / "deg", out, weights, Runtime(batch_size=3, compile="off"))
    assert project_stage("blur", cfg, tmp / "deg", out, weights, Runtime(batch_size="auto", compile="off")) == \
        ["p2_0"]


def test_a_longer_interrupted_run_leaves_no_stale_progress_images(setup):
    """Each face's progress/ holds only the current run's snapshots."""
    tmp, weights, aligned = setup
    degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), aligned_faces(aligned), tmp / "deg")
    out = tmp / "proj"
    stale = out / "p0_0" / "progress"
    for step in (3, 6, 9):
        save_png(stale / f"step{step:05d}.png", np.zeros((4, 4, 3), np.uint8))
    project_stage("blur", ProjectorConfig(**CFG), tmp / "deg", out, weights)
    assert sorted(p.name for p in stale.iterdir()) == ["step00003.png"]


def test_project_stage_refuses_bad_targets_before_work(setup):
    tmp, weights, aligned = setup
    degrade_stage("none", ops({"type": "none"}), aligned_faces(aligned), tmp / "deg")
    big = np.zeros((64, 64, 3), np.uint8)
    save_png(tmp / "deg" / "p1_0.png", big)
    with pytest.raises(ValueError, match=r"p1_0\.png: target is 64x64, the generator makes 32x32 "):
        project_stage("none", ProjectorConfig(**CFG), tmp / "deg", tmp / "proj", weights)
    (tmp / "deg" / "p1_0.png").write_bytes(b"garbage")
    with pytest.raises(PhotoError, match=r"p1_0\.png"):
        project_stage("none", ProjectorConfig(**CFG), tmp / "deg", tmp / "proj", weights)
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
    from conftest import GOLDEN_ALIGN as g
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

    from conftest import ROOT
    from ruamel.yaml import YAML

    from recon.config import load_params
    tmp, weights, aligned = setup
    params = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    params["align"]["resolution"] = 32
    params["degrade"]["blur"] = {"type": "blur", "kernel": 5, "sigma": 1.0}
    params["project"]["default"].update(CFG)
    with open(tmp / "params.yaml", "w") as f:
        YAML().dump(params, f)
    p = load_params(tmp / "params.yaml")
    files = resolve_weights(weights)
    degrade_stage("blur", p.ops("blur"), aligned_faces(aligned), tmp / "deg")
    project_stage("blur", p.project.for_mode("blur"), tmp / "deg", tmp / "pipe", weights)
    res = subprocess.run([sys.executable, "-m", "recon.cli", "project", *sorted(str(f) for f in aligned.glob("*.png")),
                          "--generator", str(files.generator), "--vgg", str(files.vgg16),
                          "--out", str(tmp / "cli"), "--params", str(tmp / "params.yaml"), "--degrade", "blur",
                          "--device", "cpu"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("p0_0", "p1_0", "p2_0"):
        for f in ("image.png", "degraded.png", "target.png", "loss.csv", "latents.npz"):
            assert (tmp / "pipe" / name / f).read_bytes() == (tmp / "cli" / name / f).read_bytes(), (name, f)


def test_robust_method_through_the_project_stage(setup):
    from recon.config import Runtime
    tmp, weights, aligned = setup
    degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), aligned_faces(aligned), tmp / "deg")
    cfg = ProjectorConfig(method="robust", num_steps=9, robust=RobustConfig(min_loss_res=4))
    done = project_stage("blur", cfg, tmp / "deg", tmp / "proj", weights, Runtime(batch_size=2, compile="off"))
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
    img = G.synthesis(torch.from_numpy(np.load(out / "latents.npz")["wpp"])[None], noise_mode="const")
    assert np.abs(np.asarray(Image.open(out / "image.png")).astype(int) - to_uint8(img)[0].astype(int)).max() <= 1
    # settings of the official projector do not touch a robust result; its own do
    assert project_stage("blur", cfg.model_copy(update=dict(latent_space="w+")), tmp / "deg", tmp / "proj",
                         weights) == []


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
    brush = ops({"type": "mask", "source": "brush", "strokes": 3})
    degrade_stage("mask", brush, faces, tmp / "a", seed=7)
    degrade_stage("mask", brush, faces, tmp / "b", seed=7)
    masks = [np.asarray(Image.open(tmp / "a" / f"{f.name}_mask.png")) for f in faces]
    assert all(np.array_equal(m, np.asarray(Image.open(tmp / "b" / f"{f.name}_mask.png")))
               for m, f in zip(masks, faces))
    assert not np.array_equal(masks[0], masks[1])
    assert all(0 < (m == 255).mean() < 0.9 for m in masks)
    degrade_stage("mask", brush, faces[:1], tmp / "c", seed=2**32 - 1)      # the largest seed works


def test_init_from_another_mode_and_from_a_file(setup):
    """``init: <mode>`` starts each face from that mode's result (refine, or restore from a
    reconstruction); ``init: <file>.npz`` starts every face from one latent; a missing source is
    named; a changed source invalidates the result."""
    from recon.model.networks import latent_shapes
    from recon.pipeline.starts import read_init
    tmp, weights, aligned = setup
    faces = aligned_faces(aligned)
    degrade_stage("none", ops({"type": "none"}), faces, tmp / "deg" / "none")
    degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), faces, tmp / "deg" / "blur")
    proj = tmp / "projected"
    official = ProjectorConfig(**CFG)
    robust = ProjectorConfig(method="robust", num_steps=6, robust=RobustConfig(min_loss_res=4), init="none")
    with pytest.raises(MissingInputError, match=r"none/p0_0/latents.npz: starting latents not found "
                                                r"\(run `dvc repro project@none` first\)"):
        project_stage("blur", robust, tmp / "deg" / "blur", proj / "blur", weights)
    assert not (proj / "blur").exists() or not any((proj / "blur").glob("*/done.json"))
    project_stage("none", official, tmp / "deg" / "none", proj / "none", weights)
    project_stage("blur", robust, tmp / "deg" / "blur", proj / "blur", weights)
    G = recon.load_generator(resolve_weights(weights).generator)
    shapes = latent_shapes(G.config)
    for face in ("p0_0", "p2_0"):
        start = read_init(proj / "none" / face / "latents.npz", ("wpp", "wp", "ws", "w"), shapes)
        assert start.ndim == 1                       # the official W-space result: a W start
        with np.load(proj / "blur" / face / "latents.npz") as z:
            w = torch.from_numpy(z["w"])
        # the W phase ran 2 NGD steps of 0.08 from the reconstruction, not from w_avg
        assert 0 < float((w - start).norm()) <= 0.16 + 1e-5
        assert float((w - G.mapping.w_avg).norm()) > 0.5
    # a new reconstruction makes the restoration stale; an unchanged one does not
    assert project_stage("blur", robust, tmp / "deg" / "blur", proj / "blur", weights) == []
    project_stage("none", official.model_copy(update=dict(num_steps=7)), tmp / "deg" / "none", proj / "none",
                  weights)
    assert len(project_stage("blur", robust, tmp / "deg" / "blur", proj / "blur", weights)) == 3

    # one file for every face, and the official projector starting from a robust result's W+
    refine = official.model_copy(update=dict(init=str(proj / "blur" / "p1_0" / "latents.npz"), latent_space="w+"))
    project_stage("blur", refine, tmp / "deg" / "blur", tmp / "refined", weights)
    with np.load(proj / "blur" / "p1_0" / "latents.npz") as z:
        wp = torch.from_numpy(z["wp"])
    for face in ("p0_0", "p1_0"):
        ws = torch.from_numpy(np.load(tmp / "refined" / face / "latents.npz")["ws"])
        assert float((ws - wp).abs().max()) < 1.0 and float((ws - wp).abs().max()) > 0
    with pytest.raises(ParamsError, match=r"holds a W\+ latent .*latent_space is w, which starts from one w; "
                                          r"use latent_space: w\+ \(params.yaml: project.blur.init and "
                                          r"project.blur.latent_space\)"):
        project_stage("blur", official.model_copy(update=dict(init=refine.init)), tmp / "deg" / "blur",
                      tmp / "refined_w", weights)
    assert not (tmp / "refined_w").exists()


@pytest.mark.parametrize("content,message", [
    (dict(ws=np.zeros((3, 5), np.float32)), r"ws must be a float array of shape \[8, 64\] for this generator, "
                                            r"got float32 \[3, 5\]"),
    (dict(w=np.zeros(64, np.int64)), r"w must be a float array of shape \[64\] .*got int64"),
    (dict(w=np.zeros(64, np.complex64)), r"w must be a float array .*got complex64"),
    (dict(w=np.array(["a"] * 64)), r"w must be a float array .*got <U1"),
    (dict(w=np.zeros(64, [("a", "f4")])), r"w must be a float array"),
    (dict(w=np.full(64, 1e30, np.float32)), r"w must be finite and within \+-1000, got values up to 1e\+30"),
    (dict(w=np.full(64, np.nan, np.float32)), r"w must be finite"),
    ("header", r"not a readable latents.npz"),
    ("huge", r"w must be a float array of shape \[64\] for this generator, got float32 \[1000000000000\]"),
    ("text", r"not a readable latents.npz \(BadZipFile"),
], ids=["shape", "int64", "complex", "string", "structured", "1e30", "nan", "bad header", "huge header", "text"])
def test_bad_starting_latents_are_refused_before_any_model_loads(setup, content, message, monkeypatch):
    """A starting latent must be a finite float array of the generator's shape, in a sane range;
    the file and the key are named, and nothing is loaded or written."""
    import zipfile
    tmp, weights, aligned = setup
    degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), aligned_faces(aligned), tmp / "deg")
    bad = tmp / "bad.npz"
    if content == "text":
        bad.write_text("not a zip")
    elif isinstance(content, str):
        text = (b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }" if content == "huge"
                else b"{'descr': '<f4', 'fortran_order'")
        text = text.ljust(117) + b"\n"
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("w.npy", b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + b"\x00" * 16)
    else:
        np.savez(bad, **content)

    def no_models(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr("recon.pipeline.project.load_models", no_models)
    with pytest.raises(ParamsError, match=message):
        project_stage("blur", ProjectorConfig(**dict(CFG, init=str(bad))), tmp / "deg", tmp / "out", weights)
    assert not (tmp / "out").exists() or not any((tmp / "out").glob("*/*"))


def test_compile_auto_decides_from_the_stages_own_steps(setup, monkeypatch, capsys, tmp_path):
    """``compile: auto`` times the stage's first eager steps and compiles only when the steps still
    planned repay a compilation (its cost lowered here to the tiny generator's short run), saying
    which with the numbers; the results are the same bytes either way."""
    import recon.restore.compiled as compiled
    from recon.config import Runtime
    tmp, weights, aligned = setup
    monkeypatch.setattr(compiled, "_marks_path", lambda: tmp_path / "compiled-steps.json")
    degrade_stage("blur", ops({"type": "blur", "kernel": 5, "sigma": 1.0}), aligned_faces(aligned), tmp / "deg")
    compiles = []

    def fake_compile(fn, **kw):
        compiles.append(kw)
        return fn
    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = ProjectorConfig(**CFG)
    auto = Runtime(batch_size=3, compile="auto")
    project_stage("blur", cfg, tmp / "deg", tmp / "a", weights, auto)
    err = capsys.readouterr().err
    assert compiles == []                                # 6 steps of a 32 px generator repay nothing
    assert re.search(r"project blur: compile auto: 3 steps planned at \S+ s \(eager, measured\) would save about "
                     r"0 s \(9% at 32 px\), less than a first compilation costs \(about 150 s\): not compiling", err), err
    monkeypatch.setattr(compiled, "COLD_COMPILE_S", 0.0)
    project_stage("blur", cfg, tmp / "deg", tmp / "b", weights, auto)
    assert compiles == [dict(dynamic=False, mode=None)]
    assert "more than a first compilation costs (about 0 s): compiling" in capsys.readouterr().err
    # the step is now noted as compiled here: the next run counts a warm compilation
    monkeypatch.setattr(compiled, "WARM_COMPILE_S", 1e9)
    project_stage("blur", cfg, tmp / "deg", tmp / "c", weights, auto)
    assert len(compiles) == 1
    assert "less than a compilation from torch's warm cache costs" in capsys.readouterr().err
    for face in ("p0_0", "p1_0", "p2_0"):
        images = [(tmp / run / face / "image.png").read_bytes() for run in "abc"]
        assert images[0] == images[1] == images[2]
