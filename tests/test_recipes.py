"""The README's scale-out recipes, as written: the preparation line in a scratch project, then the
Ray and the Dask blocks (their folder filled in, two workers, no GPU) started from a directory
outside the project; each gives the bytes of one worker, and `dvc repro` afterwards restores
nothing again. `recon work --repo` works from any directory."""
import hashlib
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from scratch_repo import make_repo, sh

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")]
README = (ROOT / "README.md").read_text()


def readme_block(first_line: str) -> str:
    """The README's fenced code block whose first line is ``first_line``."""
    for block in re.findall(r"```(?:python|bash)\n(.*?)```", README, flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"the README has no code block starting with {first_line!r}")


def results(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not {".work", ".snapshots"} & set(p.parts)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("recipes")
    repo, env = make_repo(work, ("astronaut.png", "grace_hopper.jpg", "luciano.png"), {
        "degrade.blur.kernel": 5, "degrade.blur.sigma": 1.5, "project.default.num_steps": 6,
        "project.default.w_avg_samples": 200, "project.default.snapshot_every": 2, "project.runtime.batch_size": 1})
    env["OMP_NUM_THREADS"] = "1"
    prep = readme_block("dvc repro download_weights").strip()
    assert prep == "dvc repro download_weights degrade@blur"
    sh(prep.split(), repo, env)                                   # the README's preparation, as written
    assert (repo / "weights" / "weights.json").is_file() and (repo / "data" / "degraded" / "blur").is_dir()
    # one worker, from inside the project: the bytes every launcher must give
    sh(["recon", "work", "project@blur", "--wait"], repo, env)
    one = results(repo / "data" / "projected" / "blur")
    assert sum(k.endswith("done.json") for k in one) == 3
    return repo, env, one


def run_recipe(project, tmp_path, first_line: str, knobs: dict):
    repo, env, one = project
    shutil.rmtree(repo / "data" / "projected" / "blur")
    code = readme_block(first_line)
    for name, value in dict(knobs, REPO=str(repo)).items():      # the knobs the README names, filled in
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
        assert n == 1, name
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "recipe.py").write_text(code)
    res = subprocess.run([sys.executable, "recipe.py"], cwd=outside, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "[0, 0]" in res.stdout.splitlines()                      # both workers exited 0
    assert results(repo / "data" / "projected" / "blur") == one
    done = [line for p in (repo / ".recon" / "state" / "projected" / "blur" / ".work" / "log").iterdir()
            for line in p.read_text().splitlines()]
    assert len(done) == 3                                             # each batch once, by either worker
    again = sh(["dvc", "repro", "project@blur"], repo, env)
    said = again.stderr + again.stdout          # it runs and finds every face done, or (dvc.lock already
    assert "3 of 3 faces already done" in said or "didn't change, skipping" in said     # has them) skips
    assert results(repo / "data" / "projected" / "blur") == one


def test_the_dask_recipe_as_written(project, tmp_path):
    pytest.importorskip("dask.distributed")
    run_recipe(project, tmp_path, "# Dask:", {"WORKERS": 2})


def test_the_ray_recipe_as_written(project, tmp_path):
    pytest.importorskip("ray")
    run_recipe(project, tmp_path, "# Ray:", {"WORKERS": 2, "GPUS_PER_WORKER": 0})


def test_recon_work_from_another_directory_names_a_missing_stage(project, tmp_path):
    repo, env, _ = project
    res = subprocess.run(["recon", "work", "project@nothing", "--repo", str(repo)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr.startswith(f"recon work: error: project@nothing: not a stage of {repo}/dvc.yaml")
    res = subprocess.run(["recon", "work", "project@blur", "--repo", str(tmp_path)], cwd=repo, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip() == (f"recon work: error: --repo {tmp_path}: no dvc.yaml there "
                                                           "(the project folder that holds the stage)")
    assert os.listdir(tmp_path) == []
