"""`python -m recon.bench` runs each contender in its own process and prints one table with the
official-equivalent baseline first and every row's speed against it."""
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
                          "cpu", "--vgg", "", "--json", str(tmp_path / "rows.json")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in res.stdout.splitlines() if line.startswith("| cpu")]
    assert [(r[3], r[4], r[6], r[7]) for r in rows] == [
        ("1", "official", "ref", "fp32"), ("1", "recon", "ref", "bf16"), ("2", "recon", "ref", "bf16")]
    assert rows[0][-1] == "1.00x"
    for r in rows:
        s_per_step, tps, peak, first = float(r[8]), float(r[9]), float(r[10]), float(r[11])
        gflop, tflops, gemm_tflops = float(r[12]), float(r[13]), float(r[14])
        assert first > 0
        assert s_per_step > 0 and peak > 100
        assert tps == pytest.approx(int(r[3]) / s_per_step, rel=0.02)
        assert gflop > 0 and tflops > 0
        assert gemm_tflops > 0 and 0 <= float(r[15].rstrip(" %")) <= 150
    # FLOPs per image-step are the architecture's: the same at any batch (and precision); the
    # official loop does no less arithmetic than recon's step
    recon_gflop = {float(r[12]) for r in rows[1:]}
    assert len(recon_gflop) == 1 and 0 < recon_gflop.pop() <= float(rows[0][12])
    for row in json.loads((tmp_path / "rows.json").read_text()):      # the unrounded numbers
        assert row["achieved_tflops"] == pytest.approx(
            row["gflop_per_image_step"] * row["target_steps_per_s"] / 1000, rel=1e-6)
    assert re.search(r"process CPU time", res.stdout)


def test_bench_reports_a_failed_configuration_and_goes_on():
    res = subprocess.run([sys.executable, "-m", "recon.bench", "--shapes", "16:256:32", "--steps", "1", "--repeats",
                          "1", "--device", "cpu", "--vgg", "", "--timeout", "0.01"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    assert "every configuration failed" in res.stderr
    assert res.stderr.count("FAILED: ran past --timeout 0.01 s") == 2
