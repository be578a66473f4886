"""Scale-out on the CPU: workers of a stage share its units through the output folder. Independent
processes started at different times, one killed with SIGKILL mid-unit, finish with the bytes of
one worker and each unit done once; `workers: 2` under torchrun gives the same bytes; the
synthetic study and the benchmark split across two workers give the bytes of one."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_weights
from ruamel.yaml import YAML

pytestmark = pytest.mark.slow

FACES = 5


def digests(folder: Path) -> dict:
    """sha256 of every result file (image.png, latents.npz, loss.csv, done.json, ...); the work
    queue and the snapshots aside."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not {".work", ".snapshots"} & set(p.parts)}


@pytest.fixture(scope="module")
def project(tmp_path_factory, golden_dir):
    """A project folder: tiny weights, five degraded targets, params for short runs."""
    import recon
    from recon.data.imageio import save_png, to_uint8
    from recon.pipeline.degrade import degrade_stage
    from recon.pipeline.records import Face
    from recon.restore.degrade import parse_ops
    root = tmp_path_factory.mktemp("scale")
    make_weights(root / "weights", golden_dir / "official_format.pkl")
    G = recon.load_generator(golden_dir / "official_format.pkl")
    faces = to_uint8(G(torch.randn(FACES, 64, generator=torch.Generator().manual_seed(3)), None,
                       truncation_psi=0.5, noise_mode="const"))
    records = []
    for k, img in enumerate(faces):
        save_png(root / "aligned" / f"f{k}_0.png", img)
        records.append(Face(f"f{k}_0", str(root / "aligned" / f"f{k}_0.png"), f"f{k}.png"))
    degrade_stage("blur", parse_ops([{"type": "blur", "kernel": 5, "sigma": 1.0}]), records, root / "deg")
    params = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    params["align"]["resolution"] = 32
    params["degrade"] = {"blur": {"type": "blur", "kernel": 5, "sigma": 1.0}}
    params["project"] = {"default": dict(params["project"]["default"], num_steps=40, w_avg_samples=200,
                                         snapshot_every=5),
                         "runtime": dict(params["project"]["runtime"], batch_size=1, lease_s=60),
                         "blur": {}, "starts": {"blur": "data/degraded/blur"}}
    params["synthetic"] = dict(seeds=[0], truncation_psi=0.7, num_steps=[3, 6], latent_dist_reg_weight=[0.0, 0.01])
    params["benchmark"].update(seeds=[0, 1], tasks=["noise", "inpaint_center"], levels=["M"], budget=4,
                               identity=False, methods={"official": {}, "robust": {"method": "robust",
                                                                                  "robust": {"min_loss_res": 4}}})
    with open(root / "params.yaml", "w") as f:
        YAML().dump(params, f)
    return root


def stage(root, name, out, *extra, params="params.yaml", **popen):
    args = {"project": ["blur", "--degraded", "deg", "--weights", "weights", "--out", out, "--losses", f"{out}.csv"],
            "synthetic": ["--weights", "weights", "--out", out, "--losses", f"{out}.csv"],
            "benchmark": ["--weights", "weights", "--out", out]}[name]
    env = dict(os.environ, RECON_NO_CUDA_OPS="1", OMP_NUM_THREADS="1", RECON_PROGRESS_INTERVAL="0.5")
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", f"recon.stages.{name}", *args, "--params", params, *extra]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return err


@pytest.fixture(scope="module")
def one_worker(project):
    t0 = time.perf_counter()
    finish(stage(project, "project", "one"))
    print(f"\none worker: {time.perf_counter() - t0:.1f} s")
    return digests(project / "one")


def units_done(folder: Path) -> list:
    return sorted(json.loads(line)["unit"] for p in (folder / ".work" / "log").iterdir()
                  for line in p.read_text().splitlines())


def test_independent_workers_one_killed_give_the_bytes_of_one(project, one_worker):
    """Three workers started one after another (none knows of the others); the first is killed
    with SIGKILL while it holds a unit; the others take its unit over, every unit is done once,
    and the results are the bytes one worker makes."""
    out = project / "many"
    first = stage(project, "project", "many", "--no-wait")
    claims = out / ".work" / "claims"
    deadline = time.time() + 120
    while time.time() < deadline and not (claims.is_dir() and any(claims.iterdir())
                                          and any((out / ".snapshots").glob("*.pt"))):
        time.sleep(0.05)
    later = [stage(project, "project", "many", "--no-wait")]
    time.sleep(1.0)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    later.append(stage(project, "project", "many"))                  # the last one waits for the whole stage
    for proc in later:
        finish(proc)
    assert digests(out) == one_worker
    assert units_done(out) == [f"batch{k:05d}" for k in range(FACES)]   # each batch exactly once
    assert json.loads((out / ".work" / "plan.json").read_text())["meta"] == {"batch_size": 1}
    assert (project / "many.csv").read_bytes() == (project / "one.csv").read_bytes()


def test_workers_under_torchrun_give_the_bytes_of_one(project, one_worker):
    params = YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())
    params["project"]["runtime"]["workers"] = 2
    with open(project / "two.yaml", "w") as f:
        YAML().dump(params, f)
    t0 = time.perf_counter()
    err = finish(stage(project, "project", "two", params="two.yaml"))
    print(f"\ntwo workers under torchrun: {time.perf_counter() - t0:.1f} s")
    assert "project blur: 2 workers" in err and "[worker 1]" not in err
    assert digests(project / "two") == one_worker


@pytest.mark.parametrize("name", ["synthetic", "benchmark"])
def test_the_study_and_the_benchmark_split_across_two_workers(project, name):
    finish(stage(project, name, f"{name}1"))
    a = stage(project, name, f"{name}2", "--no-wait")
    b = stage(project, name, f"{name}2")
    finish(a)
    finish(b)
    one, two = digests(project / f"{name}1"), digests(project / f"{name}2")
    if name == "benchmark":           # the seconds of a restoration are a measurement, not a result
        one = {k: v for k, v in one.items() if not k.endswith(("cell.json", "results.json"))}
        two = {k: v for k, v in two.items() if not k.endswith(("cell.json", "results.json"))}
        r1, r2 = (json.loads((project / f"{name}{i}" / "results.json").read_text()) for i in (1, 2))
        for cell in r1["table"]:
            for method in ("official", "robust"):
                assert {k: v for k, v in r1["table"][cell][method].items() if k != "seconds"} == \
                    {k: v for k, v in r2["table"][cell][method].items() if k != "seconds"}
    assert one == two
    workers = {json.loads(line)["worker"] for p in (project / f"{name}2" / ".work" / "log").iterdir()
               for line in p.read_text().splitlines()}
    assert len(units_done(project / f"{name}2")) == len(set(units_done(project / f"{name}2")))
    assert len(workers) >= 1
    shutil.rmtree(project / f"{name}2" / ".work")
