"""Several workers on the CPU (gloo): the project stage through `dvc repro` with workers: 2 gives
the bytes of a workers: 1 run; a worker killed mid-run is restarted by the launcher and the stage
still gives those bytes; `torchrun` started by hand works; the synthetic study shards its cells."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scratch_repo import make_repo, set_params, sh

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")]

PHOTOS = ("grace_hopper.jpg", "luciano.png", "astronaut.png", "woman_closeup.jpg")


def digests(folder: Path) -> dict:
    """sha256 of every result file (image.png, latents.npz, loss.csv, ...), progress images aside."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "progress" not in p.parts
            and p.name != "done.json"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo, env = make_repo(tmp_path_factory.mktemp("dist"), PHOTOS, {
        "degrade.blur.kernel": 5, "degrade.blur.sigma": 1.5,
        "project.default.num_steps": 300, "project.default.w_avg_samples": 200,
        "project.default.snapshot_every": 20, "project.runtime.batch_size": 1,
        "synthetic.seeds": [0], "synthetic.num_steps": [3, 4], "synthetic.latent_dist_reg_weight": [0.0, 0.01],
    })
    sh(["dvc", "repro", "project@blur"], repo, env)          # workers: 1, the reference
    ref = repo.parent / "ref"
    shutil.copytree(repo / "data" / "projected" / "blur", ref)
    assert len([d for d in ref.iterdir() if d.is_dir()]) >= 4
    return repo, env, ref


def test_dvc_repro_with_two_workers_gives_the_same_bytes(repo):
    repo, env, ref = repo
    set_params(repo / "params.yaml", {"project.runtime.workers": 2})
    res = sh(["dvc", "repro", "-f", "-s", "project@blur"], repo, env)
    assert "project blur: 2 workers" in res.stderr, res.stderr[-2000:]
    assert digests(repo / "data" / "projected" / "blur") == digests(ref)
    # one overall bar on rank 0; the other rank prints no bar of its own
    assert "[rank 1]" not in res.stderr and "faces" in res.stderr
    set_params(repo / "params.yaml", {"project.runtime.workers": 1})


def _descendants(pid: int):
    children = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rank_of(pid: int):
    try:
        env = dict(kv.split("=", 1) for kv in (Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
                                               .split("\0")) if "=" in kv)
    except OSError:
        return None
    return env.get("RANK")


def test_a_killed_worker_is_restarted_and_the_result_is_unchanged(repo):
    repo, env, ref = repo
    set_params(repo / "params.yaml", {"project.runtime.workers": 2, "project.runtime.max_restarts": 2})
    out = repo / "data" / "projected" / "blur"
    shutil.rmtree(out)
    stage = subprocess.Popen([sys.executable, "stages/project.py", "blur", "--degraded", "data/degraded/blur",
                              "--weights", "weights", "--out", "data/projected/blur", "--losses",
                              "reports/losses/blur.csv"], cwd=repo, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline and stage.poll() is None:
        # wait until rank 1 has written a snapshot of its first face, then kill it
        if any((out / ".snapshots").glob("*.pt")) if (out / ".snapshots").is_dir() else False:
            for pid in _descendants(stage.pid):
                if _rank_of(pid) == "1":
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
        time.sleep(0.05)
    _, err = stage.communicate(timeout=600)
    assert killed is not None, err[-3000:]
    assert stage.returncode == 0, err[-4000:]
    assert "Traceback" not in err.split("project blur: 2 workers")[-1] or "SIGKILL" in err
    assert digests(out) == digests(ref)
    set_params(repo / "params.yaml", {"project.runtime.workers": 1})


def test_torchrun_by_hand(repo):
    repo, env, ref = repo
    out = repo.parent / "by_hand"
    res = sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
              "stages/project.py", "blur", "--degraded", "data/degraded/blur", "--weights", "weights",
              "--out", str(out), "--losses", str(repo.parent / "by_hand.csv")], repo, env)
    assert "workers (restarted" not in res.stderr          # it used the launcher's group, no relaunch
    assert digests(out) == digests(ref)
    assert len((repo.parent / "by_hand.csv").read_text().splitlines()) == 1 + 4 * 300


def test_synthetic_study_with_two_workers(repo):
    repo, env, _ = repo
    cmd = [sys.executable, "stages/synthetic.py", "--weights", "weights", "--losses"]
    sh(cmd + [str(repo.parent / "s1.csv"), "--out", str(repo.parent / "syn1")], repo, env)
    set_params(repo / "params.yaml", {"project.runtime.workers": 2})
    res = sh(cmd + [str(repo.parent / "s2.csv"), "--out", str(repo.parent / "syn2")], repo, env)
    set_params(repo / "params.yaml", {"project.runtime.workers": 1})
    assert "synthetic: 2 workers" in res.stderr
    assert digests(repo.parent / "syn1") == digests(repo.parent / "syn2")
    assert (repo.parent / "s1.csv").read_bytes() == (repo.parent / "s2.csv").read_bytes()
