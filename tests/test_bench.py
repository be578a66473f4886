"""`python -m recon.bench` runs each contender in its own process and prints one table with the
official-equivalent baseline first and every row's speed against it."""
import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_table():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "recon.bench", "--shapes", "16:256:32", "--batch", "1", "2",
                          "--ops", "auto", "ref", "--steps", "2", "--repeats", "1", "--device", "cpu", "--vgg", ""],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines() if line.startswith("| cpu")]
    assert [(r[3].strip(), r[4].strip(), r[6].strip()) for r in rows] == [
        ("1", "official", "ref"), ("1", "recon", "auto"), ("1", "recon", "ref"), ("2", "recon", "auto"),
        ("2", "recon", "ref")]
    assert rows[0][-1].strip() == "1.00x"
    for r in rows:
        s_per_step, tps, peak, first = float(r[7]), float(r[8]), float(r[9]), float(r[10])
        assert first > 0
        assert s_per_step > 0 and peak > 100
        assert tps == __import__("pytest").approx(int(r[3]) / s_per_step, rel=0.02)
    assert re.search(r"process CPU time", res.stdout)


def test_bench_reports_a_failed_configuration_and_goes_on():
    res = subprocess.run([sys.executable, "-m", "recon.bench", "--shapes", "16:256:32", "--steps", "1", "--repeats",
                          "1", "--device", "cpu", "--vgg", "", "--timeout", "0.01"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    assert "every configuration failed" in res.stderr
    assert res.stderr.count("FAILED: ran past --timeout 0.01 s") == 2
