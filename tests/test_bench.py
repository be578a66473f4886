"""`python -m recon.bench` runs each contender in its own process and prints one table with the
baseline first (recon's re-implementation of NVIDIA's loop, or with a checkout of
stylegan2-ada-pytorch NVIDIA's own projector, checked to compute the same steps) and every row's
speed against it."""
import json
import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_table(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "recon.bench", "--shapes", "16:256:32", "--batch", "1", "2",
                          "--ops", "ref", "--precision", "bf16", "--steps", "2", "--repeats", "1", "--device",
                          "cpu", "--vgg", "", "--official-src", "", "--json", str(tmp_path / "rows.json")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in res.stdout.splitlines() if line.startswith("| cpu")]
    assert [(r[3], r[4], r[6], r[7]) for r in rows] == [
        ("1", "official-equivalent (recon's copy)", "ref", "fp32"), ("1", "recon", "ref", "bf16"),
        ("2", "recon", "ref", "bf16")]
    assert rows[0][-1] == "1.00x"
    for r in rows:
        s_per_step, tps, peak, first = float(r[8]), float(r[9]), float(r[10]), float(r[11])
        gflop, tflops, gemm_tflops = float(r[12]), float(r[13]), float(r[14])
        assert first > 0
        assert s_per_step > 0 and peak > 100
        assert tps == pytest.approx(int(r[3]) / s_per_step, rel=0.02)
        assert gflop > 0 and tflops > 0
        assert gemm_tflops > 0 and float(r[15].rstrip(" %")) >= 0
    # FLOPs per image-step are the architecture's: the same at any batch (and precision); the
    # official loop does no less arithmetic than recon's step
    recon_gflop = {float(r[12]) for r in rows[1:]}
    assert len(recon_gflop) == 1 and 0 < recon_gflop.pop() <= float(rows[0][12])
    for row in json.loads((tmp_path / "rows.json").read_text())["rows"]:      # the unrounded numbers
        assert row["achieved_tflops"] == pytest.approx(
            row["gflop_per_image_step"] * row["target_steps_per_s"] / 1000, rel=1e-6)
    assert re.search(r"process CPU time", res.stdout)
    assert "baseline: recon's re-implementation of NVIDIA's projector loop" in res.stdout
    assert "vs official-equivalent |" in res.stdout


def test_bench_reports_a_failed_configuration_and_goes_on():
    res = subprocess.run([sys.executable, "-m", "recon.bench", "--shapes", "16:256:32", "--steps", "1", "--repeats",
                          "1", "--device", "cpu", "--vgg", "", "--official-src", "", "--timeout", "0.01"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    assert "every configuration failed" in res.stderr
    assert res.stderr.count("FAILED: ran past --timeout 0.01 s") == 2


OFFICIAL_SRC = os.environ.get("RECON_OFFICIAL_SRC", "")


@pytest.mark.slow
@pytest.mark.skipif(not OFFICIAL_SRC, reason="needs NVIDIA's checkout: set RECON_OFFICIAL_SRC to a checkout of "
                                              "NVlabs/stylegan2-ada-pytorch (its licence keeps it out of recon)")
def test_bench_against_nvidias_own_projector(tmp_path):
    """NVIDIA's projector.project(), imported from the checkout, on the same weights, VGG16 file and
    draws, computes the same first steps as recon's (latents within 1e-4), and is the table's
    baseline."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "recon.bench", "--official-src", OFFICIAL_SRC, "--shapes",
                          "32:512:64", "--steps", "2", "--repeats", "1", "--device", "cpu", "--json",
                          str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "rows.json").read_text())
    agree = doc["agreement"]["32:512:64"]
    assert agree["agree"] and agree["w_max_diff"] < 1e-4 and agree["steps"] == 5
    assert agree["losses_nvidia"] == pytest.approx([round(v, 2) for v in agree["losses_recon"]], abs=0.011)
    assert doc["baseline"] == "nvidia"
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in res.stdout.splitlines() if line.startswith("| cpu")]
    assert [r[4] for r in rows] == ["NVIDIA projector.py", "recon"] and rows[0][-1] == "1.00x"
    assert "baseline: NVIDIA's own projector.project()" in res.stdout and "| vs NVIDIA |" in res.stdout


def test_a_folder_that_is_not_nvidias_checkout_is_refused(tmp_path):
    res = subprocess.run([sys.executable, "-m", "recon.bench", "--official-src", str(tmp_path), "--repeats", "1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert f"--official-src {tmp_path}: not a checkout of NVlabs/stylegan2-ada-pytorch (no projector.py" in res.stderr
