"""End to end: the DVC pipeline in a scratch git repository, with tiny weights served by file:// URLs.

Runs `dvc repro` on two sample photos, checks the report and metrics; edits a blur param and checks
that only the blur stages and the report rerun; damages an output and checks it is redone; runs a
`--temp` experiment (the queue's executor) and checks that it reruns only what changed and that
`dvc exp show` lists it with its metrics.
"""
import json
import re
import shutil

import pytest
from conftest import ROOT
from scratch_repo import make_repo, ran_stages, set_params, sh

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("e2e"), ("grace_hopper.jpg", "luciano.png"), {
        "degrade.blur.kernel": 5, "degrade.blur.sigma": 1.5,
        "profile": "quick", "project.default.num_steps": 600,          # quick: 12 steps "project.default.w_avg_samples": 200,
        "project.default.snapshot_every": 5, "project.runtime.batch_size": 2,
        "synthetic.seeds": [0], "synthetic.num_steps": [4, 8], "synthetic.latent_dist_reg_weight": [0.0, 0.01],
        # quick: 10 robust steps, then 10 tuning steps
        "project.mask": {"method": "robust", "num_steps": 450, "robust": {"min_loss_res": 4},
                         "tune": {"steps": 100, "learning_rate": 3e-3}},
        "project.blur": {"samples": 2},                              # posterior samples
        "degrade.old": {"type": "grayscale", "observed": True},     # photos that are already degraded
        "project.old": {"init": "blur"},                             # starts from the blur mode's results
        "project.starts.old": "data/projected/blur",
        "project.grayscale": {"latent_dist_reg_weight": 0.5, "init": "inits/start.npz"},
        "project.starts.grayscale": "inits/start.npz",
        "benchmark.seeds": [0], "benchmark.tasks": ["upsample", "noise", "jpeg", "inpaint_brush"],
        "benchmark.levels": ["M"], "benchmark.budget": 6,
        "benchmark.methods": {"official": {}, "robust": {"method": "robust", "robust": {"min_loss_res": 4}},
                              "robust_tune": {"method": "robust", "robust": {"min_loss_res": 4}, "tune": {"steps": 2}},
                              "samples": {"samples": 2}},
    })


def test_repro_report_rerun_and_experiments(project):
    repo, env = project
    import numpy as np
    (repo / "inits").mkdir()
    np.savez(repo / "inits" / "start.npz", w=np.zeros(32, np.float32))
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "a starting latent"], repo, env)
    first = sh(["dvc", "repro"], repo, env)
    assert {"download_weights", "align", "degrade@blur", "project@mask", "synthetic", "benchmark", "results",
            "report"} <= ran_stages(first.stdout)

    # weights: digests recorded, generator converted once
    record = json.loads((repo / "weights" / "weights.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", record["generator"]["sha256"]) and not record["generator"]["verified"]
    assert re.fullmatch(r"[0-9a-f]{64}", record["generator"]["converted_sha256"])
    assert [p.name for p in (repo / "weights").iterdir() if p.name != ".gitignore"] == ["weights.json"]

    # report and metrics: a compact metrics.json (headline numbers, the study's best cell)
    page = (repo / "reports" / "index.html").read_text()
    for text in ("Original degraded", "Generated degraded", "Restored photos", "Synthetic study", "grace_hopper_0",
                 "luciano_0", "data:image/png;base64,", "What the numbers mean", "★ best", " dB",
                 '<h2 id="summary">Summary</h2>', "PSNR input", "profile: quick"):
        assert text in page, text
    assert "src=\"http" not in page  # self-contained
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    study = json.loads((repo / "reports" / "metrics_study.json").read_text())
    detail = json.loads((repo / "reports" / "metrics_detail.json").read_text())
    assert list(metrics) == ["blur", "grayscale", "mask", "old"] and list(study) == ["study", "bench"]
    for mode in ("blur", "grayscale", "mask"):
        assert set(metrics[mode]) == {"psnr"} and 0 < metrics[mode]["psnr"] < 100
        m = detail[mode]["mean"]
        assert 0 < m["psnr"] < 100 and -1 <= m["ssim"] <= 1 and m["identity"] >= 0
        assert m["consistency_psnr"] > 0 and m["lpips"] > 0
    assert "psnr_composited" in detail["mask"]["mean"] and "psnr_composited" in detail["grayscale"]["mean"]
    # pasting the known pixels back can only bring the result closer to the original
    assert detail["mask"]["mean"]["psnr_composited"] > detail["mask"]["mean"]["psnr"]
    assert set(study["study"]) == {"psnr"} and set(study["bench"]) == {"lpips", "best"}
    assert detail["synthetic"]["best"]["num_steps"] in (4, 8)
    assert set(detail["synthetic"]["cells"]) == {"steps4_reg0", "steps4_reg0.01", "steps8_reg0", "steps8_reg0.01"}
    # the restored photos are files, and the report's thumbnails open them
    for mode in ("blur", "grayscale", "mask", "old"):
        assert {p.name for p in (repo / "results" / mode).glob("*.png")} == {"grace_hopper.png", "luciano.png"}
        assert len(list((repo / "results" / mode / "faces").glob("*.png"))) == 2
        assert f'href="../results/{mode}/luciano.png"' in page
    assert set(detail["blur"]["faces"]) == {"grace_hopper_0", "luciano_0"}
    # an observed mode: the photo is its own target; no ground-truth metrics; pasted back
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(repo / "data" / "degraded" / "old" / "luciano_0.png")),
                          np.asarray(Image.open(repo / "data" / "aligned" / "luciano_0.png")))
    assert set(metrics["old"]) == {"consistency"}
    assert set(detail["old"]["mean"]) == {"consistency_psnr", "identity", "lpips_consistency"}
    assert "Observed photo" in page and page.count("<h3>Restored photos</h3>") == 4
    # the mask mode ran the robust method: three phases, their images kept; then the tuning phase,
    # its factors stored with the latents
    mask_dir = repo / "data" / "projected" / "mask" / "luciano_0"
    assert (mask_dir / "image_W+.png").is_file() and (mask_dir / "image_W++.png").is_file()
    losses = (mask_dir / "loss.csv").read_text()
    assert "W++" in losses and losses.count(",tune,") == 10
    with np.load(mask_dir / "latents.npz") as z:
        assert any(k.startswith("tune/") for k in z.files) and "wpp" in z.files
    # the blur mode drew two posterior samples: the best kept, their mean and uncertainty shown
    blur_dir = repo / "data" / "projected" / "blur" / "luciano_0"
    assert {"mean.png", "uncertainty.png", "samples.json"} <= {p.name for p in blur_dir.iterdir()}
    assert len(list((blur_dir / "samples").glob("sample*.png"))) == 2
    assert "Uncertainty (samples" in page and "PSNR, worst sample" in page
    assert detail["blur"]["mean"]["psnr_samples_max"] >= detail["blur"]["mean"]["psnr_samples_min"]
    # the benchmark: each method at the same budget on every task, scored against the sampled truth
    bench = json.loads((repo / "data" / "benchmark" / "results.json").read_text())
    assert set(bench["table"]) == {"upsample-M", "noise-M", "jpeg-M", "inpaint_brush-M"}
    assert bench["methods"]["official"]["num_steps"] == 6 and bench["methods"]["robust"]["num_steps"] == 6
    # equal budgets in generator passes: 2 samples of 3 steps; 4 robust steps and a tuning step of 2 passes
    assert bench["methods"]["samples"]["num_steps"] == 3 and bench["methods"]["robust_tune"]["tune"]["steps"] == 1
    assert bench["methods"]["robust_tune"]["num_steps"] == 4
    assert bench["rows"] == ["official", "robust", "robust_tune", "samples", "samples mean"]
    assert all(c["samples mean"]["psnr"] > 0 for c in bench["table"].values())
    for method in ("official", "robust", "robust_tune", "samples"):
        m = detail["benchmark"]["headline"][method]
        assert 0 < m["psnr"] < 60 and m["lpips"] > 0
        for cell in bench["table"].values():
            assert cell[method]["seconds"] > 0
    assert "Benchmark: which method restores better" in page and "rows won (LPIPS)" in page
    assert (repo / "data" / "benchmark" / "jpeg-M" / "robust" / "seed0000.png").is_file()
    assert "after W+" in page                                   # the robust mode's phases in the report
    # one loss table per mode, a line per face
    table = (repo / "reports" / "losses" / "blur.csv").read_text().splitlines()
    assert table[0] == "step,face,phase,loss,dist" and len(table) == 1 + 2 * 12
    # the experiment table stays small; the plots are one per mode plus the study
    # the quick profile ran every method's steps scaled: 600 -> 12 (official), 450 -> 10 (robust)
    assert len((repo / "reports" / "losses" / "mask.csv").read_text().splitlines()) == 1 + 2 * (10 + 10)
    assert sum(len((repo / "reports" / "losses" / f"{m}.csv").read_text().splitlines()) - 1
               for m in ("blur", "grayscale", "mask", "old")) == 2 * (12 + 12 + 20 + 12)
    # the experiment table stays small: one headline per mode (four here, one observed), the study's
    # best PSNR and the benchmark's best LPIPS with its method: seven columns
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env).stdout)
    columns = set()

    def flat(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                flat(f"{prefix}.{k}" if prefix else k, v)
        else:
            columns.add(prefix)
    for path, data in shown[0]["data"]["metrics"].items():          # the workspace
        flat(path, data["data"])
    assert columns == {"reports/metrics.json.blur.psnr", "reports/metrics.json.grayscale.psnr",
                       "reports/metrics.json.mask.psnr", "reports/metrics.json.old.consistency",
                       "reports/metrics_study.json.study.psnr", "reports/metrics_study.json.bench.lpips",
                       "reports/metrics_study.json.bench.best"}, sorted(columns)
    widest = max(len(line) for line in sh(["dvc", "metrics", "show"], repo, env).stdout.splitlines())
    assert widest <= 160, widest
    plots = json.loads(sh(["dvc", "plots", "show", "--json", "--split"], repo, env).stdout)["data"]
    assert sorted(plots) == sorted(f"reports/losses/{m}.csv" for m in ("blur", "grayscale", "mask", "old", "synthetic")), \
        list(plots)

    # Editing the code a stage runs makes DVC see the stage as changed.
    status = json.loads(sh(["dvc", "status", "--json"], repo, env).stdout)
    assert status == {}, status
    projector = repo / "recon" / "restore" / "official.py"
    original = projector.read_text()
    projector.write_text(original + "\n# an edit\n")
    status = json.loads(sh(["dvc", "status", "--json"], repo, env).stdout)
    assert {"project@blur", "synthetic", "report"} <= set(status), status
    projector.write_text(original)
    assert json.loads(sh(["dvc", "status", "--json"], repo, env).stdout) == {}

    # Nothing changed: nothing runs.
    again = sh(["dvc", "repro"], repo, env)
    assert ran_stages(again.stdout) == set()

    # Editing a blur param reruns the blur stages, the mode that starts from blur's results, and
    # the report; rewriting a mode's init file reruns that mode.
    set_params(repo / "params.yaml", {"degrade.blur.sigma": 2.0})
    blur = sh(["dvc", "repro"], repo, env)
    assert ran_stages(blur.stdout) == {"degrade@blur", "project@blur", "project@old", "results", "report"}
    np.savez(repo / "inits" / "start.npz", w=np.full(32, 0.1, np.float32))
    assert set(json.loads(sh(["dvc", "status", "--json"], repo, env).stdout)) == {"project@grayscale"}
    sh(["dvc", "repro"], repo, env)

    # A damaged output of a finished face: DVC restores it from its run-cache (the stage's outputs
    # are plain outputs) and dvc.lock records the good bytes. A face damaged in the stage's work
    # folder (.recon/state) is redone when the stage runs, to the same bytes.
    lock = (repo / "dvc.lock").read_text()
    latents = repo / "data" / "projected" / "blur" / "luciano_0" / "latents.npz"
    kept = repo / ".recon" / "state" / "projected" / "blur" / "luciano_0" / "latents.npz"
    good = latents.read_bytes()
    assert kept.read_bytes() == good
    latents.write_bytes(good[:len(good) // 2])
    redo = sh(["dvc", "repro"], repo, env)
    assert ran_stages(redo.stdout) == set() and "Stage 'project@blur' is cached" in redo.stdout, redo.stdout[-2000:]
    assert latents.read_bytes() == good and (repo / "dvc.lock").read_text() == lock
    kept.write_bytes(good[:len(good) // 2])
    redo = sh(["dvc", "repro", "-f", "project@blur"], repo, env)
    assert "project blur: luciano_0 runs again" in redo.stderr and "1 of 2 faces already done" in redo.stderr
    assert kept.read_bytes() == good and latents.read_bytes() == good and (repo / "dvc.lock").read_text() == lock

    # Back to an earlier setting, the projections come back from DVC's run-cache: nothing projected.
    set_params(repo / "params.yaml", {"degrade.blur.sigma": 3.0})
    sh(["dvc", "repro"], repo, env)
    set_params(repo / "params.yaml", {"degrade.blur.sigma": 2.0})
    back = sh(["dvc", "repro"], repo, env)
    assert {"project@blur", "project@old"}.isdisjoint(ran_stages(back.stdout)), back.stdout[-2000:]
    assert "Stage 'project@blur' is cached - skipping run, checking out outputs" in back.stdout
    from ruamel.yaml import YAML
    now, then = (YAML(typ="safe", pure=True).load(text)["stages"] for text in ((repo / "dvc.lock").read_text(), lock))
    assert latents.read_bytes() == good and {k for k in now if now[k] != then.get(k)} == set(), back.stdout[-3000:]

    # Experiments
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "baseline"], repo, env)
    # a --temp experiment checks every unchanged output out of the cache (the weights included:
    # weights.json names them in recon's per-user store) and runs only what the change affects
    # (and the runtime section, the device of each queued or --temp experiment, reaches the stage)
    temp = sh(["dvc", "exp", "run", "--temp", "-n", "sigma25", "-S", "degrade.blur.sigma=2.5",
               "-S", "project.runtime.device=cpu"], repo, env)
    assert ran_stages(temp.stdout) == {"degrade@blur", "project@blur", "project@old", "results", "report"}, \
        temp.stdout[-3000:]
    assert "project blur: restored 2 faces here, on cpu" in temp.stdout + temp.stderr
    # the experiment is listed beside the baseline, with its param and its metrics: the README's
    # command, as written, fits 160 columns and shows no hash
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("dvc exp show --only-changed"))
    table = sh(["bash", "-c", command], repo, dict(env, COLUMNS="160")).stdout
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 160 and "…" not in table, table
    header = next(line for line in lines if "Experiment" in line)
    for column in ("blur.psnr", "grayscale.psnr", "old.consistency", "study.psnr", "bench.lpips", "bench.best",
                   "degrade.blur.sigma"):
        assert column in header, (column, header)
    assert "sigma25" in table and not re.search(r"[0-9a-f]{32}", table), table
    data = json.loads(sh(["dvc", "exp", "show", "--json"], repo, env).stdout)
    runs = {}
    for commit in data:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                runs[rev.get("name")] = rev["data"]
    assert set(runs) == {"sigma25"}, set(runs)
    assert runs["sigma25"]["params"]["params.yaml"]["data"]["degrade"]["blur"]["sigma"] == 2.5
    baseline = json.loads((repo / "reports" / "metrics.json").read_text())["blur"]["psnr"]
    psnr = runs["sigma25"]["metrics"]["reports/metrics.json"]["data"]["blur"]["psnr"]
    assert isinstance(psnr, float) and psnr != baseline
