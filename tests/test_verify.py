"""`recon verify`: every check against the repository's fixtures passes on this install, the report
says so with figures and tolerances; a fixture changed behind recon's back fails exactly the checks
that read it, and the command exits 1."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file, save_file

from recon.verify import run_verify

CHECKS = ["generator outputs", "generator gradients", "ops", "CUDA kernels", "official projector replay",
          "robust method replay", "robust replay, pipeline's degradation", "FFHQ alignment",
          "FFHQ alignment, end to end", "precision gate", "projection speed"]


def report(out):
    return {c["name"]: c for c in json.loads((out / "report.json").read_text())["checks"]}


def test_the_quick_variant_passes_here_and_reports_every_check(tmp_path):
    lines = []
    assert run_verify("cpu", tmp_path, quick=True, official_src="", say=lines.append) == 0
    got = report(tmp_path)
    assert list(got) == CHECKS
    for name in ("generator outputs", "generator gradients", "ops", "official projector replay",
                 "robust method replay", "robust replay, pipeline's degradation", "FFHQ alignment"):
        assert got[name]["verdict"] == "pass", got[name]
        assert got[name]["tolerance"] and got[name]["figure"]
    assert got["CUDA kernels"]["verdict"] == ("skipped" if not torch.cuda.is_available() else "pass")
    assert got["projection speed"]["verdict"] == "measured" and "x official-equivalent" in got["projection speed"]["figure"]
    # the worst deviation is far inside the tolerance (a float32 reimplementation: ~1e-6)
    assert float(got["generator outputs"]["figure"].split("max |diff| ")[1].split(",")[0]) < 1e-4
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# recon verify on cpu (quick)") and "**every check passed**" in md
    assert "| official projector replay |" in md and "torch " + torch.__version__ in md
    page = (tmp_path / "report.html").read_text()
    assert "Every check passed." in page and page.count("<tr>") >= len(CHECKS) + 1
    assert lines[-1].startswith("recon verify: every check passed")


def test_a_changed_fixture_fails_its_check_and_the_command(tmp_path):
    fixtures = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fixtures)
    cases = load_file(str(fixtures / "stylegan2-tiny-a" / "cases.safetensors"))
    cases["img_synth_mixed_const"][0, 0, 0, 0] += 1e-3           # ten times the tolerance, one pixel
    save_file(cases, str(fixtures / "stylegan2-tiny-a" / "cases.safetensors"))
    robust = load_file(str(fixtures / "robust-tiny-a" / "robust.safetensors"))
    robust["loss"][4] *= 1.001
    save_file(robust, str(fixtures / "robust-tiny-a" / "robust.safetensors"))
    res = subprocess.run([sys.executable, "-m", "recon.cli", "verify", "--quick", "--device", "cpu", "--fixtures",
                          str(fixtures), "--out", str(tmp_path / "out"), "--official-src", ""],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr[-2000:]
    got = report(tmp_path / "out")
    failed = sorted(n for n, c in got.items() if c["verdict"] == "FAIL")
    assert failed == ["generator outputs", "robust method replay", "robust replay, pipeline's degradation"]
    ratio = float(got["generator outputs"]["figure"].split(", ")[1].split(" of the tolerance")[0])
    assert 5 < ratio < 20                                        # 1e-3 against 1e-4 + 1e-4 |value|
    assert "FAILED: generator outputs, robust method replay" in res.stdout
    assert "**FAILED: generator outputs, robust method replay, robust replay, pipeline's degradation**" in \
        (tmp_path / "out" / "report.md").read_text()


def test_a_folder_without_the_fixtures_is_refused_in_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "recon.cli", "verify", "--fixtures", str(tmp_path), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip() == (f"recon verify: error: --fixtures {tmp_path}: not recon's fixtures folder (no "
                                  "stylegan2-tiny-a/G_ema.safetensors, stylegan2-tiny-a/cases.safetensors, "
                                  "stylegan2-tiny-a/config.json); recon verify reads tests/fixtures of a clone of "
                                  "the repository: run it from one, or name the folder with --fixtures")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["tiny_bryan_0.png"])
def test_the_alignment_check_fails_on_a_shifted_face(tmp_path, name):
    """A golden crop moved by one pixel (what a half-pixel bug does, and more) is caught."""
    from PIL import Image

    from recon.verify.checks import Context, alignment_math
    fixtures = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fixtures, ignore=shutil.ignore_patterns("*.safetensors", "*.pkl"))
    img = Image.open(fixtures / "align" / name)
    img.transform(img.size, Image.Transform.AFFINE, (1, 0, 1, 0, 1, 0)).save(fixtures / "align" / name)
    check = alignment_math(Context(fixtures, "cpu", quick=True))
    assert check.verdict == "FAIL" and "1 of 2 faces bit-identical, the lowest PSNR" in check.figure
