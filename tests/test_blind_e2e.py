"""End to end with photos whose degradation nobody knows: `dvc repro` on a scratch project with a
128 px tiny generator, an observed mode whose blur is estimated with each face (`sigma: auto`), an
observed mode at each face's own sampling (`factor: auto`; a photo shrunk four times holds a face
too small for the generator's size), and a fully blind one (`type: auto`: grayscale detected on a
gray photo, the size and the blur found). The report shows what was found, beside each face."""
import json
import shutil

import pytest
from PIL import Image
from scratch_repo import make_repo, sh

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")]


def test_blind_modes_through_dvc_repro(tmp_path):
    repo, env = make_repo(tmp_path, ("grace_hopper.jpg", "luciano.png"), {
        "profile": "quick",
        "degrade": {"blurry": {"type": "blur", "sigma": "auto", "observed": True},
                    "small": {"type": "downsample", "factor": "auto", "observed": True},
                    "unknown": {"type": "auto", "observed": True}},
        "project": {"default": {"num_steps": 1000, "w_avg_samples": 200}, "runtime": {"precision": "fp32"},
                    "blurry": {}, "small": {}, "unknown": {"method": "robust"},
                    "starts": {m: f"data/degraded/{m}" for m in ("blurry", "small", "unknown")}},
        "synthetic.seeds": [0], "synthetic.num_steps": [4], "synthetic.latent_dist_reg_weight": [0.0],
        "benchmark.seeds": [0], "benchmark.tasks": ["blur", "blur_blind", "upsample", "upsample_blind"],
        "benchmark.levels": ["M"], "benchmark.budget": 8, "benchmark.identity": False,
        "benchmark.methods": {"official": {}},
    }, resolution=128)
    hopper = Image.open(repo / "data" / "raw" / "grace_hopper.jpg")
    hopper.resize((hopper.width // 4, hopper.height // 4), Image.Resampling.LANCZOS).convert("L").save(
        repo / "data" / "raw" / "small_gray.png")
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "a small gray photo"], repo, env)
    sh(["dvc", "repro"], repo, env, timeout=1500)

    small = json.loads((repo / "data" / "degraded" / "small" / "targets.json").read_text())
    detected = {f["name"]: f["detected"] for f in small["faces"]}
    assert detected["grace_hopper_0"]["observation"] == 128 and detected["grace_hopper_0"]["factor"] == 1
    assert detected["small_gray_0"]["factor"] == 2 and 55 < detected["small_gray_0"]["quad_side"] < 116
    assert Image.open(repo / "data" / "degraded" / "small" / "small_gray_0.png").size == (64, 64)
    unknown = {f["name"]: f for f in json.loads((repo / "data" / "degraded" / "unknown" / "targets.json")
                                                .read_text())["faces"]}
    assert [o["type"] for o in unknown["small_gray_0"]["ops"]] == ["blur", "grayscale", "downsample"]
    assert [o["type"] for o in unknown["luciano_0"]["ops"]] == ["blur"]
    for mode in ("blurry", "unknown"):
        for face in ("grace_hopper_0", "luciano_0", "small_gray_0"):
            receipt = json.loads((repo / "data" / "projected" / mode / face / "done.json").read_text())
            assert 0.3 <= receipt["estimates"]["sigma"] <= 12.0
    detail = json.loads((repo / "reports" / "metrics_detail.json").read_text())
    assert set(detail["unknown"]["faces"]["small_gray_0"]) >= {"sigma", "face_px", "observation_px",
                                                                "grayscale_found"}
    assert detail["unknown"]["faces"]["small_gray_0"]["grayscale_found"] == 1.0
    assert detail["unknown"]["faces"]["luciano_0"]["grayscale_found"] == 0.0
    page = (repo / "reports" / "index.html").read_text()
    for text in ("blur found", "face in the photo", "observed at", "grayscale found", "Blind vs known"):
        assert text in page, text
    bench = json.loads((repo / "data" / "benchmark" / "results.json").read_text())
    (blur_row,) = [r for r in bench["blind"] if r["task"] == "blur_blind"]
    assert blur_row["blind"]["sigma_true"] == 6.0 and 0.3 <= blur_row["blind"]["sigma"] <= 12.0
    (up_row,) = [r for r in bench["blind"] if r["task"] == "upsample_blind"]
    assert up_row["blind"]["factor"] == up_row["blind"]["factor_true"] == 8.0
    assert up_row["blind"]["psnr"] == pytest.approx(up_row["known"]["psnr"], abs=1e-6)   # the same restoration
