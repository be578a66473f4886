"""What a user reads and types: progress lines off a terminal (the time of day, an estimate from the
first timed steps, a total line, a sane rate after a resume), one line for many faces that run
again, `recon --version`, `recon info` on files that are not checkpoints, `recon project` on an
image that is not aligned, `recon restore` from photos to restored photos, `profile: auto`."""
import io
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import FACES

from recon.progress import StageProgress


def test_progress_lines_off_a_terminal_have_the_time_an_estimate_and_a_total(monkeypatch):
    import recon.progress as progress
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    out = io.StringIO()
    shown = StageProgress("project blur", 4, stream=out)
    on_step = shown.track(2, 10)
    for step in range(1, 11):
        time.sleep(0.01)
        on_step(step)
    shown.item_done("a done")
    shown.item_done("b done")
    shown.close()
    lines = out.getvalue().splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d project blur: ", line) for line in lines), lines
    estimates = [line for line in lines if "takes" in line]
    assert len(estimates) == 1 and re.search(r"a step of 2 faces takes [\d.e-]+ s here: about \d+ s for the "
                                             r"[\d.]+ faces left", estimates[0]), estimates
    assert re.search(r"2/4 faces done; 2 here in \d+ s", lines[-1]), lines[-1]
    assert "a done" in out.getvalue() and "\r" not in out.getvalue()


def test_a_resumed_batch_does_not_count_as_work_done_now():
    out = io.StringIO()
    shown = StageProgress("project blur", 2, stream=out)
    shown.start_t -= 5                      # five seconds into the run
    shown.track(2, 100, start_step=90)      # resumed at 90 %
    assert shown.n == pytest.approx(1.8)
    assert "per face" not in shown.status()       # no rate from what an earlier run did


def test_many_faces_that_run_again_for_one_reason_are_one_line():
    from recon.pipeline.records import OTHER_SETTINGS, say_reruns
    said = []
    say_reruns("benchmark", [(f"cell{k}", f"/x/cell{k}", OTHER_SETTINGS) for k in range(28)]
               + [("p0_0", "/x/p0_0", "latents.npz is missing")], said.append)
    assert said == [f"benchmark: 28 run again ({OTHER_SETTINGS}): cell0, cell1, cell2 and 25 more",
                    "benchmark: p0_0 runs again: /x/p0_0: latents.npz is missing"]


def recon(*args, **kw):
    return subprocess.run([sys.executable, "-m", "recon.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def test_version_and_info_say_what_a_file_is(tmp_path, golden_dir):
    import recon as package
    assert recon("--version").stdout.strip() == f"recon {package.__version__}"
    np.savez(tmp_path / "latents.npz", w=np.zeros(3), wp=np.zeros((2, 3)))
    for path, what in ((FACES / "obama.jpg", "a JPEG image"), (FACES / "luciano.png", "a PNG image"),
                       (tmp_path / "latents.npz", "a numpy archive (.npz) of 2 arrays (w, wp)"),
                       (golden_dir / "config.json", "a JSON file")):
        res = recon("info", path)
        assert res.returncode == 1
        assert res.stderr.strip().startswith(f"recon info: error: {path}: {what}"), res.stderr
        assert "not a generator checkpoint" in res.stderr and "Traceback" not in res.stderr
    ok = recon("info", golden_dir / "official_format.pkl")
    assert ok.returncode == 0 and '"img_resolution": 32' in ok.stdout


def test_project_names_the_users_image_that_is_not_aligned(tmp_path, golden_dir):
    from tiny_vgg import write_tiny_vgg
    write_tiny_vgg(tmp_path / "vgg.pt")
    res = recon("project", FACES / "luciano.png", "--generator", golden_dir / "official_format.pkl", "--vgg",
                tmp_path / "vgg.pt", "--out", tmp_path / "out")
    assert res.returncode == 1
    assert res.stderr.strip() == (f"recon project: error: {FACES / 'luciano.png'}: 400x400, not an aligned face of "
                                  "the generator's 32x32 (align photos first: recon align PHOTO --out DIR --size 32; "
                                  "or recon restore PHOTO)")


@pytest.mark.slow
def test_restore_takes_photos_to_restored_photos(tmp_path, golden_dir):
    """Photos as they are, aligned, restored blind (a gray one found gray) and pasted back."""
    from PIL import Image
    from tiny_vgg import write_tiny_vgg
    write_tiny_vgg(tmp_path / "vgg.pt")
    (tmp_path / "p.yaml").write_text(
        "align: {resolution: 32}\n"
        "degrade:\n  old: {type: auto, sigma_range: [0.3, 4.0], observed: true}\n"
        "project:\n  default: {num_steps: 8, w_avg_samples: 200}\n  old: {method: robust, robust: {min_loss_res: 4}}\n"
        "  starts: {old: data/degraded/old}\n")
    res = recon("restore", FACES / "grace_hopper.jpg", FACES / "gray_portrait.jpg", "--out", tmp_path / "out",
                "--degrade", "old", "--params", tmp_path / "p.yaml", "--generator", golden_dir / "official_format.pkl",
                "--vgg", tmp_path / "vgg.pt", env=dict(__import__("os").environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["faces", "grace_hopper.png",
                                                                                  "gray_portrait.png"]
    assert sorted(p.name for p in (out / "faces").iterdir()) == ["grace_hopper_0.png", "gray_portrait_0.png"]
    photo = np.asarray(Image.open(out / "grace_hopper.png"))
    original = np.asarray(Image.open(FACES / "grace_hopper.jpg").convert("RGB"))
    assert photo.shape == original.shape and (photo != original).any()
    changed = (photo != original).any(-1)
    assert changed.mean() < 0.6                   # the face's crop, not the whole photo
    assert "restored 2 faces of 2 photos into" in res.stdout
    gray = np.asarray(Image.open(out / "gray_portrait.png")).astype(int)
    assert gray.ndim == 3                         # written as RGB; the face found gray is restored gray too


def test_profile_auto_is_quick_without_a_gpu_and_full_with_one(monkeypatch):
    import torch

    from recon.config import parse_params
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = parse_params({})
    assert p.profile == "quick" and p.project.default.num_steps == 20
    assert parse_params({"project": {"runtime": {"device": "cuda"}}}).profile == "full"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_params({}).profile == "full" and parse_params({}).project.default.num_steps == 1000
    assert parse_params({"profile": "full", "project": {"runtime": {"device": "cpu"}}}).project.default.num_steps == 1000
