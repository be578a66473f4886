"""End to end with photos that are already degraded, through `dvc repro` on a scratch project with
a 128 px tiny generator: the README's example for them pasted as written (each mode for its own
photos; a grayscale print, a blurry snapshot whose blur is estimated, a green scratch), plus a mode
at each face's own sampling (`factor: auto`; a photo shrunk four times holds a face too small for
the generator's size), a fully blind one (`type: auto`: grayscale detected on a gray photo, the
size and the blur found), and a mask mode whose photos have no pixel of its colour (it has nothing
to do and stops nothing). The restored photos are files; the report shows what was found."""
import json
import re
import shutil

import numpy as np
import pytest
from conftest import FACES, ROOT
from PIL import Image, ImageDraw, ImageFilter
from ruamel.yaml import YAML
from scratch_repo import make_repo, sh

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")]


def readme_yaml(first_key: str) -> dict:
    """The README's YAML block that starts with ``first_key``."""
    for block in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S):
        data = YAML(typ="safe", pure=True).load(block)
        if isinstance(data, dict) and first_key in data.get("degrade", {}):
            return data
    raise AssertionError(f"no YAML block in the README with degrade.{first_key}")


def test_photos_already_degraded_through_dvc_repro(tmp_path):
    example = readme_yaml("old_bw")
    degrade = dict(example["degrade"])
    degrade.update(small={"type": "downsample", "factor": "auto", "observed": True, "photos": ["small_*", "blurry_*"]},
                   unknown={"type": "auto", "observed": True, "photos": ["small_*", "scratched_*"]},
                   nogreen={"type": "mask", "source": "color", "color": [0, 255, 0], "observed": True,
                            "photos": ["bw_*"]})
    modes = dict(example["project"], small={}, unknown={"method": "robust"}, nogreen={})
    modes["starts"] = dict(modes["starts"], **{m: f"data/degraded/{m}" for m in ("small", "unknown", "nogreen")})
    repo, env = make_repo(tmp_path, ("grace_hopper.jpg", "luciano.png"), {
        "profile": "quick", "degrade": degrade,
        "project": {"default": {"num_steps": 1000, "w_avg_samples": 200}, "runtime": {"precision": "fp32"}, **modes},
        "synthetic.seeds": [0], "synthetic.num_steps": [4], "synthetic.latent_dist_reg_weight": [0.0],
        "benchmark.seeds": [0], "benchmark.tasks": ["blur", "blur_blind", "upsample", "upsample_blind"],
        "benchmark.levels": ["M"], "benchmark.budget": 8, "benchmark.identity": False,
        "benchmark.methods": {"official": {}},
    }, resolution=128)
    raw = repo / "data" / "raw"
    hopper, luciano = Image.open(raw / "grace_hopper.jpg").convert("RGB"), Image.open(raw / "luciano.png").convert("RGB")
    (raw / "grace_hopper.jpg").unlink()
    (raw / "luciano.png").unlink()
    hopper.filter(ImageFilter.GaussianBlur(3)).save(raw / "blurry_hopper.png")
    Image.open(FACES / "gray_portrait.jpg").resize((320, 480)).save(raw / "bw_portrait.png")
    scratched = luciano.copy()
    ImageDraw.Draw(scratched).line([(150, 150), (250, 260)], fill=(0, 255, 0), width=9)
    scratched.save(raw / "scratched_luciano.png")
    hopper.resize((hopper.width // 4, hopper.height // 4), Image.Resampling.LANCZOS).convert("L").save(
        raw / "small_gray.png")
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "the photos"], repo, env)
    run = sh(["dvc", "repro"], repo, env, timeout=1500)
    assert "degrade nogreen: warning: no face can be a target of this mode" in run.stderr

    def targets(mode):
        return {f["name"]: f for f in json.loads((repo / "data" / "degraded" / mode / "targets.json").read_text())
                ["faces"]}
    assert set(targets("old_bw")) == {"bw_portrait_0"} and set(targets("scratched")) == {"scratched_luciano_0"}
    assert set(targets("blurry")) == {"blurry_hopper_0"} and targets("nogreen") == {}
    small = targets("small")
    assert set(small) == {"small_gray_0", "blurry_hopper_0"}
    assert small["small_gray_0"]["detected"]["factor"] == 2 and small["blurry_hopper_0"]["detected"]["factor"] == 1
    assert Image.open(repo / "data" / "degraded" / "small" / "small_gray_0.png").size == (64, 64)
    unknown = targets("unknown")
    assert [o["type"] for o in unknown["small_gray_0"]["ops"]] == ["blur", "grayscale", "downsample"]
    assert [o["type"] for o in unknown["scratched_luciano_0"]["ops"]] == ["blur"]
    for mode, face in (("blurry", "blurry_hopper_0"), ("unknown", "small_gray_0"), ("unknown", "scratched_luciano_0")):
        receipt = json.loads((repo / "data" / "projected" / mode / face / "done.json").read_text())
        assert 0.3 <= receipt["estimates"]["sigma"] <= 12.0

    # the restored photos are files; a mask mode changes its photo only around the hole
    results = repo / "results"
    for mode, photo in (("old_bw", "bw_portrait"), ("blurry", "blurry_hopper"), ("scratched", "scratched_luciano"),
                        ("small", "small_gray"), ("unknown", "small_gray")):
        assert (results / mode / f"{photo}.png").is_file() and (results / mode / "faces" / f"{photo}_0.png").is_file()
    before = np.asarray(Image.open(raw / "scratched_luciano.png").convert("RGB")).astype(int)
    after = np.asarray(Image.open(results / "scratched" / "scratched_luciano.png")).astype(int)
    changed = np.abs(after - before).max(-1) > 0
    ys, xs = np.nonzero(changed)
    assert changed.any() and xs.min() >= 120 and xs.max() <= 280 and ys.min() >= 120 and ys.max() <= 290
    assert not (results / "nogreen").exists() or not any((results / "nogreen").glob("*.png"))

    detail = json.loads((repo / "reports" / "metrics_detail.json").read_text())
    assert set(detail["unknown"]["faces"]["small_gray_0"]) >= {"sigma", "face_px", "observation_px", "grayscale_found"}
    assert detail["unknown"]["faces"]["small_gray_0"]["grayscale_found"] == 1.0
    assert detail["unknown"]["faces"]["scratched_luciano_0"]["grayscale_found"] == 0.0
    page = (repo / "reports" / "index.html").read_text()
    for text in ("blur found", "face in the photo", "observed at", "grayscale found", "Blind vs known",
                 '<h2 id="summary">Summary</h2>', 'href="../results/scratched/scratched_luciano.png"',
                 "For the photos bw_*.", "profile: quick"):
        assert text in page, text
    bench = json.loads((repo / "data" / "benchmark" / "results.json").read_text())
    (blur_row,) = [r for r in bench["blind"] if r["task"] == "blur_blind"]
    assert blur_row["blind"]["sigma_true"] == 6.0 and 0.3 <= blur_row["blind"]["sigma"] <= 12.0
    (up_row,) = [r for r in bench["blind"] if r["task"] == "upsample_blind"]
    assert up_row["blind"]["factor"] == up_row["blind"]["factor_true"] == 8.0
    assert up_row["blind"]["psnr"] == pytest.approx(up_row["known"]["psnr"], abs=1e-6)   # the same restoration
