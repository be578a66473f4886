"""recon's own files, damaged or forged, through the stage commands: work plans, claims, receipts
(done.json, cell.json), tuned factors of a starting latent, the precision gate's cache. Every case
ends with the bytes of a clean run or a one-line refusal naming the file; none gives a traceback,
and nothing outside the output folder is created, written or removed (the tree around it is
compared before and after). A worker killed between writing a batch's receipts and marking its
unit done leaves it to be taken over without projecting those faces again."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, make_weights
from ruamel.yaml import YAML

pytestmark = pytest.mark.slow
FACES = 3


def digests(folder: Path) -> dict:
    """sha256 of every result file; the work queue and the snapshots aside."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not {".work", ".snapshots"} & set(p.parts)}


def tree(folder: Path, skip: Path) -> dict:
    """Every path under ``folder`` but ``skip`` (an output folder) and its loss table, with its
    bytes or its link target."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p == skip or skip in p.parents or p == skip.with_name(f"{skip.name}.csv"):
            continue
        out[str(p)] = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else "dir")
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, golden_dir):
    import recon
    from recon.data.imageio import save_png, to_uint8
    from recon.pipeline.degrade import degrade_stage
    from recon.pipeline.records import Face
    from recon.restore.degrade import parse_ops
    root = tmp_path_factory.mktemp("hostile")
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
    params["project"] = {"default": dict(params["project"]["default"], num_steps=6, w_avg_samples=200,
                                         snapshot_every=2),
                         "runtime": dict(params["project"]["runtime"], batch_size=1), "blur": {},
                         "starts": {"blur": "data/degraded/blur"}}
    params["synthetic"] = dict(seeds=[0], truncation_psi=0.7, num_steps=[3], latent_dist_reg_weight=[0.0])
    params["benchmark"].update(seeds=[0], tasks=["noise"], levels=["M"], budget=3, identity=False,
                               methods={"official": {}})
    with open(root / "params.yaml", "w") as f:
        YAML().dump(params, f)
    (root / "outside").mkdir()
    (root / "outside" / "precious.txt").write_text("not recon's")
    return root


def stage(root, name, out, *extra, params="params.yaml", env=None, check=True):
    args = {"project": ["blur", "--degraded", "deg", "--weights", "weights", "--out", out, "--losses", f"{out}.csv"],
            "synthetic": ["--weights", "weights", "--out", out, "--losses", f"{out}.csv"],
            "benchmark": ["--weights", "weights", "--out", out]}[name]
    run_env = dict(os.environ, RECON_NO_CUDA_OPS="1", OMP_NUM_THREADS="1", **(env or {}))
    res = subprocess.run([sys.executable, "-m", f"recon.stages.{name}", *args, "--params", params, *extra],
                         cwd=root, env=run_env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def clean(project):
    """A clean run of each stage: its bytes, and its folder to damage copies of."""
    out = {}
    for name in ("project", "synthetic", "benchmark"):
        stage(project, name, f"clean-{name}")
        out[name] = digests(project / f"clean-{name}")
        if name == "benchmark":      # a restoration's seconds are a measurement, not a result
            out[name] = {k: v for k, v in out[name].items() if not k.endswith(("cell.json", "results.json"))}
    return out


def case(project, clean, name, label, damage, expect_line=None):
    """Copy the clean output folder, damage it, run the stage: the clean bytes again, nothing
    outside the output folder touched, and (``expect_line``) that line said."""
    out = project / f"{name}-{label}"
    shutil.copytree(project / f"clean-{name}", out, symlinks=True)
    damage(out)
    before = tree(project, out)
    res = stage(project, name, out.name)
    got = digests(out)
    if name == "benchmark":
        got = {k: v for k, v in got.items() if not k.endswith(("cell.json", "results.json"))}
    assert got == clean[name], label
    assert tree(project, out) == before, f"{label}: something outside {out} changed"
    if expect_line:
        assert expect_line in res.stderr, res.stderr[-2000:]
    return res


def plan_of(project):
    return json.loads((project / "clean-project" / ".work" / "plan.json").read_text())


def hostile_plan(change):
    def damage(out):
        plan = json.loads((out / ".work" / "plan.json").read_text())
        for face in (out.iterdir()):                       # every face to do again, so the plan is used
            if face.is_dir() and not face.name.startswith("."):
                (face / "done.json").unlink()
        shutil.rmtree(out / ".work" / "done")
        (out / ".work" / "done").mkdir()
        text = change(plan)
        (out / ".work" / "plan.json").write_text(text if isinstance(text, str) else json.dumps(text))
    return damage


@pytest.mark.parametrize("label,change,line", [
    ("unit id up and out", lambda p: {**p, "units": [dict(p["units"][0], id="../../../../x")] + p["units"][1:]},
     "is not a plain name made by recon"),
    ("absolute unit id", lambda p: {**p, "units": [dict(p["units"][0], id="/tmp/recon-x")] + p["units"][1:]},
     "is not a plain name made by recon"),
    ("a face left out", lambda p: {**p, "units": p["units"][:2]},
     "its units are not those of the stage's inputs (2 units, the inputs make 3)"),
    ("batch size 0", lambda p: {**p, "meta": {"batch_size": 0}}, "meta.batch_size"),
    ("a cost that is text", lambda p: {**p, "units": [dict(p["units"][0], cost="x")] + p["units"][1:]},
     "units.0.cost"),
    ("units a number", lambda p: {**p, "units": 5}, "units: "),
    ("an unknown face", lambda p: {**p, "units": [dict(p["units"][0], data={"faces": ["nobody_0"]})]
                                   + p["units"][1:]}, "ids or faces differ"),
    ("nested a hundred thousand deep", lambda p: "[" * 100000, "nested more than 32 levels deep"),
    ("not JSON", lambda p: "{\"key\": ", "not valid JSON"),
])
def test_a_hostile_plan_is_planned_again(project, clean, label, change, line):
    res = case(project, clean, "project", "plan-" + label.replace(" ", "-"), hostile_plan(change), line)
    assert "planned again from the stage's inputs" in res.stderr
    assert not Path("/tmp/recon-x").exists()


def test_a_work_folder_that_is_a_link_is_replaced_not_followed(project, clean):
    target = project / "outside" / "work-elsewhere"
    target.mkdir()
    (target / "plan.json").write_text(json.dumps(plan_of(project)))

    def damage(out):
        shutil.rmtree(out / ".work")
        os.symlink(target, out / ".work")
        (out / "f1_0" / "done.json").unlink()
    case(project, clean, "project", "work-link", damage, "a link, not the folder recon made")
    assert sorted(p.name for p in target.iterdir()) == ["plan.json"]
    assert not (project / "project-work-link" / ".work").is_symlink()


@pytest.mark.parametrize("label,claim", [
    ("a list", "[1, 2]"), ("pid as text", '{"worker": "w", "host": "HOST", "pid": "abc", "since": 0}'),
    ("nested", "[" * 50000), ("pid 0 on this host", '{"worker": "w", "host": "HOST", "pid": 0, "since": 0}'),
    ("a directory", None),
])
def test_a_claim_that_is_not_a_live_holders_record_is_taken_over(project, clean, label, claim):
    import socket

    def damage(out):
        for face in ("f0_0", "f1_0", "f2_0"):
            (out / face / "done.json").unlink()
        shutil.rmtree(out / ".work" / "done")
        (out / ".work" / "done").mkdir()
        path = out / ".work" / "claims" / "batch00000"
        if claim is None:
            path.mkdir()
        else:
            path.write_text(claim.replace("HOST", socket.gethostname()))
    t0 = time.perf_counter()
    case(project, clean, "project", "claim-" + label.replace(" ", "-"), damage, "batch00000: taken over (")
    assert time.perf_counter() - t0 < 120            # not the 300 s lease


def receipt_damage(face, change):
    def damage(out):
        path = out / face / "done.json"
        receipt = json.loads(path.read_text())
        text = change(receipt, out)
        path.write_text(text if isinstance(text, str) else json.dumps(text))
    return damage


def truncated(out, rel):
    p = out / rel
    p.write_bytes(p.read_bytes()[:50])


@pytest.mark.parametrize("label,damage,line", [
    ("vouches for nothing, latents truncated",
     receipt_damage("f1_0", lambda r, out: (truncated(out, "f1_0/latents.npz"), {**r, "files": {}})[1]),
     "done.json does not vouch for image.png"),
    ("lists only /etc/hostname",
     receipt_damage("f1_0", lambda r, out: {**r, "files": {"/etc/hostname": "0" * 64}}),
     "done.json lists '/etc/hostname', which is not a file of its own folder"),
    ("vouches for another face's image",
     receipt_damage("f1_0", lambda r, out: (shutil.copy(out / "f0_0" / "image.png", out / "f1_0" / "image.png"),
                                            {**r, "files": {**{k: v for k, v in r["files"].items() if k != "image.png"},
                                                            "../f0_0/image.png": r["files"]["image.png"]}})[1]),
     "done.json lists '../f0_0/image.png', which is not a file of its own folder"),
    ("an extra file", receipt_damage("f1_0", lambda r, out: {**r, "files": {**r["files"], "x.png": "0" * 64}}),
     "done.json lists x.png, which this result does not have"),
    ("nested", receipt_damage("f1_0", lambda r, out: "{\"a\":" * 40000), "nested more than 32 levels deep"),
    ("a digest that is not one", receipt_damage("f1_0", lambda r, out: {**r, "files": {**r["files"],
                                                                                       "image.png": [1]}}),
     "done.json is unreadable"),
])
def test_a_receipt_vouches_only_for_its_own_complete_result(project, clean, label, damage, line):
    res = case(project, clean, "project", "receipt-" + label.replace(" ", "-").replace("/", ""), damage, line)
    assert "f1_0 runs again" in res.stderr and "f0_0 runs again" not in res.stderr


def test_a_face_folder_that_is_a_link_is_replaced_not_written_through(project, clean):
    def damage(out):
        shutil.rmtree(out / "f1_0")
        os.symlink(project / "outside", out / "f1_0")
    res = case(project, clean, "project", "face-link", damage, "is a link, not a folder recon made")
    assert (project / "outside" / "precious.txt").read_text() == "not recon's"
    assert "f1_0 runs again" in res.stderr


@pytest.mark.parametrize("name,cell", [("synthetic", "steps3_reg0"), ("benchmark", "noise-M/official")])
@pytest.mark.parametrize("label,change,line", [
    ("vouches for nothing", lambda r: {**r, "files": {}}, "cell.json does not vouch for"),
    ("lists a file outside", lambda r: {**r, "files": {"../../outside/precious.txt": "0" * 64}},
     "which is not a file of its own folder"),
    ("nested", lambda r: "[" * 40000, "nested more than 32 levels deep"),
])
def test_a_cell_receipt_vouches_only_for_its_own_images(project, clean, name, cell, label, change, line):
    def damage(out):
        path = out / cell / "cell.json"
        text = change(json.loads(path.read_text()))
        path.write_text(text if isinstance(text, str) else json.dumps(text))
    res = case(project, clean, name, f"cell-{label.replace(' ', '-')}", damage, line)
    assert "runs again" in res.stderr


def test_a_worker_killed_between_the_receipts_and_the_done_marker_projects_nothing_twice(project, clean):
    out = project / "killed"
    first = stage(project, "project", "killed", env={"RECON_FAULT": "after-receipts"}, check=False)
    assert first.returncode == -9, first.stderr[-2000:]
    done = [p for p in out.iterdir() if (p / "done.json").is_file()]
    assert [p.name for p in done] == ["f0_0"]                       # batch00000: receipt written, unit not done
    assert not (out / ".work" / "done" / "batch00000").exists()
    assert list((out / ".snapshots").glob("*.pt"))                   # its snapshot outlives it until marked done
    stamp = (out / "f0_0" / "image.png").stat().st_mtime_ns
    second = stage(project, "project", "killed")
    assert "batch00000: every face is already done (their receipts vouch for them)" in second.stderr
    assert "f0_0 done:" not in second.stderr and "f1_0 done:" in second.stderr
    assert (out / "f0_0" / "image.png").stat().st_mtime_ns == stamp
    assert digests(out) == clean["project"]
    assert not (out / ".snapshots").exists()


# ----------------------------------------------------------------------------------------------
# Tuned factors of a starting latent: refused before the models load, naming the file and the key

def tuned_start(project, golden_dir, change):
    from recon.model.checkpoint import read_config
    from recon.model.networks import modulated_shapes
    shapes = modulated_shapes(read_config(golden_dir / "G_ema.safetensors"))
    arrays = {"w": np.zeros(64, np.float32)}
    for layer, (o, k) in shapes.items():
        arrays[f"tune/{layer}.a"] = np.zeros((o, 2), np.float16)
        arrays[f"tune/{layer}.b"] = np.zeros((2, k), np.float16)
    change(arrays)
    path = project / "start.npz"
    np.savez(path, **arrays)
    params = YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())
    params["project"]["blur"] = {"init": "start.npz"}
    params["project"]["starts"]["blur"] = "start.npz"
    with open(project / "tuned.yaml", "w") as f:
        YAML().dump(params, f)
    return path


def drop(key):
    return lambda a: a.pop(key)


@pytest.mark.parametrize("label,change,problem", [
    ("ranks disagree", lambda a: a.__setitem__("tune/b8.conv1.b", np.zeros((3, 288), np.float16)),
     "tune/b8.conv1.a and .b: their ranks differ (2 and 3)"),
    ("wrong rows", lambda a: a.__setitem__("tune/b8.conv1.a", np.zeros((7, 2), np.float16)),
     "tune/b8.conv1.a: must be a float array of shape [32, rank] for this generator's layer, got float16 [7, 2]"),
    ("an unknown layer", lambda a: a.__setitem__("tune/b64.conv1.a", np.zeros((3, 2), np.float16)),
     "tune/b64.conv1.a: this generator has no layer 'b64.conv1' (its layers: b4.conv1, b4.torgb, b8.conv0, b8.conv1, "
     "...)"),
    ("a missing .b", drop("tune/b16.torgb.b"), "tune/b16.torgb.b: missing (11 of the generator's 11 layers have "
                                               "factors; a tuned start has both factors of every layer)"),
    ("a .c key", lambda a: a.__setitem__("tune/b8.conv1.c", np.zeros((2, 2), np.float16)),
     "tune/b8.conv1.c: not a tuning factor (they are tune/<layer>.a and .b)"),
    ("1e300", lambda a: a.__setitem__("tune/b8.conv1.a", np.full((32, 2), 1e300)),
     "tune/b8.conv1.a: must be finite and within float32's range, got values up to 1e+300"),
])
def test_tuned_factors_that_do_not_fit_are_refused_naming_the_file(project, golden_dir, label, change, problem):
    path = tuned_start(project, golden_dir, change)
    res = stage(project, "project", "tuned", params="tuned.yaml", check=False)
    assert res.returncode == 1
    line = res.stderr.strip().splitlines()[-1]
    assert line == f"project blur: error: {path.name}: {problem} (tuned.yaml: project.blur.init)", line
    assert not (project / "tuned").exists() or not any((project / "tuned").glob("*/done.json"))


def test_run_time_errors_name_the_params_file_in_use(project):
    params = YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())
    params["project"]["blur"] = {"init": "missing.npz"}
    params["project"]["starts"]["blur"] = "missing.npz"
    with open(project / "other.yaml", "w") as f:
        YAML().dump(params, f)
    res = stage(project, "project", "other", params="other.yaml", check=False)
    assert res.returncode == 1
    assert res.stderr.strip().endswith("missing.npz: starting latents not found (other.yaml: project.blur.init)")


# ----------------------------------------------------------------------------------------------
# The gate's cache: its verdicts re-judged from its numbers

def verdict(bf16_moved=34.0, chance=16.5, passed=True, choice="bf16"):
    from recon.pipeline import gate

    def scores(moved):
        return {t: dict(loss=10.0, psnr=20.0, lpips=0.1, moved_db=moved) for t in gate.GATE_TASKS}
    return dict(modes={"fp32": dict(tasks=scores(100.0), seconds_per_step=0.4, problems=[], passed=True,
                                    speedup=1.0),
                       "bf16": dict(tasks=scores(bf16_moved), seconds_per_step=0.2, problems=[], passed=passed,
                                    speedup=2.0)},
                choice=choice, spread=dict(tasks=scores(chance), seconds_per_step=0.4), steps=gate.GATE_STEPS,
                tasks=list(gate.GATE_TASKS), seeds=list(gate.GATE_SEEDS), tolerance=dict(gate.TOLERANCE),
                rule=gate.RULE, device="cpu (bf16)", torch=torch.__version__)


@pytest.mark.parametrize("label,entry,why", [
    ("a pass its numbers do not support", verdict(bf16_moved=15.0), "says bf16 passed, but its numbers say otherwise"),
    ("a choice of fp8", dict(verdict(), choice="fp8"), "choice: Input should be"),
    ("no choice", {k: v for k, v in verdict().items() if k != "choice"}, "choice: Field required"),
    ("modes as text", dict(verdict(), modes="bf16"), "modes: Input should be a valid dictionary"),
    ("a slower choice", verdict(choice="fp32"), "chose fp32, which is not the fastest mode that passed"),
])
def test_a_cached_verdict_that_does_not_follow_from_its_numbers_is_discarded(G, vgg, tmp_path, monkeypatch, label,
                                                                              entry, why):
    from recon.pipeline import gate
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gate, "candidates", lambda device: ["fp32", "bf16"])
    _, key, _ = gate._cache(G, vgg)
    (tmp_path / gate.CACHE_NAME).write_text(json.dumps({key: entry}))
    runs = []
    monkeypatch.setattr(gate, "run_gate", lambda G, vgg, say=print: runs.append(1) or verdict(bf16_moved=14.0,
                                                                                              passed=False,
                                                                                              choice="fp32"))
    said = []
    assert gate.resolve_precision("auto", G, vgg, say=said.append) == "fp32"
    assert runs == [1]
    assert any(why in s and "is discarded" in s and "the gate runs again" in s for s in said), said
    # the honest entry it wrote is used as it is the next time
    assert gate.resolve_precision("auto", G, vgg, say=said.append) == "fp32" and runs == [1]


def test_an_honest_cached_verdict_is_used(G, vgg, tmp_path, monkeypatch):
    from recon.pipeline import gate
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gate, "candidates", lambda device: ["fp32", "bf16"])
    _, key, _ = gate._cache(G, vgg)
    (tmp_path / gate.CACHE_NAME).write_text(json.dumps({key: verdict()}))
    monkeypatch.setattr(gate, "run_gate", None)
    said = []
    assert gate.resolve_precision("auto", G, vgg, say=said.append) == "bf16"
    assert said == ["precision auto: bf16 (passed the quality gate, 2.00x fp32's speed)"]
    for damaged in ("[" * 10000, "{damaged"):
        (tmp_path / gate.CACHE_NAME).write_text(damaged)
        said.clear()
        monkeypatch.setattr(gate, "run_gate", lambda G, vgg, say=print: verdict())
        assert gate.resolve_precision("auto", G, vgg, say=said.append) == "bf16"
        assert "the gate's cache is started afresh" in said[0]


@pytest.mark.parametrize("record, label, text, problem", [
    ("targets.json", "nested", "[" * 100000, "nested more than 32 levels deep"),
    ("targets.json", "no faces", '{"mode": "blur", "ops": []}', "KeyError: 'faces'"),
    ("targets.json", "a face as a number", '{"mode": "blur", "ops": [], "faces": [1]}', "TypeError"),
    ("manifest.json", "nested", "{\"images\":" * 40000, "nested more than 32 levels deep"),
    ("manifest.json", "images a list", '{"images": [1]}', "AttributeError"),
])
def test_an_earlier_stages_record_that_is_not_its_is_refused_in_one_line(project, record, label, text, problem):
    """targets.json (degrade) and manifest.json (align), hand-edited or damaged: the next stage
    refuses in one line naming the file and the stage to run again, and writes nothing."""
    folder = project / f"rec-{record.split('.')[0]}-{label.replace(' ', '-')}"
    if record == "targets.json":
        shutil.copytree(project / "deg", folder)
        args = ["project", "blur", "--degraded", folder.name, "--weights", "weights", "--out", f"{folder.name}-out",
                "--losses", f"{folder.name}-out.csv"]
        again = f"run `dvc repro -f degrade@{folder.name}`"
    else:
        shutil.copytree(project / "aligned", folder)
        args = ["degrade", "blur", "--aligned", folder.name, "--out", f"{folder.name}-out"]
        again = "run `dvc repro -f align`"
    (folder / record).write_text(text)
    before = tree(project, folder)
    res = subprocess.run([sys.executable, "-m", f"recon.stages.{args[0]}", *args[1:], "--params", "params.yaml"],
                         cwd=project, env=dict(os.environ, RECON_NO_CUDA_OPS="1", OMP_NUM_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = next(s for s in res.stderr.splitlines() if f"{folder.name}/{record}: " in s)
    assert problem in line and line.endswith(again), line
    assert tree(project, folder) == before and not (project / f"{folder.name}-out").exists()
