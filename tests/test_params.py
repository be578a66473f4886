"""The params schema and the stage runner: every bad setting is refused by the real stage command
before any model is loaded, with exit status 1, one line naming params.yaml and the dotted key,
and no traceback; Ctrl-C exits 130 with a resume hint; a bug keeps its traceback."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from ruamel.yaml import YAML

from recon.config import DVC_BLIND_KEYS, ProjectorConfig, load_params, model_keys, parse_params
from recon.errors import ParamsError, PhotoError, ReconError
from recon.runner import INTERRUPTED, run

BASE = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())


def edited(changes: dict) -> dict:
    import copy
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return data


DELETE = object()

# (stage, mode, changes, what the one-line error must say)
BAD = [
    ("project", "blur", {"project.default.optimize_noise": "no"},
     "params.yaml: project.default.optimize_noise: must be true or false, got 'no'"),
    ("degrade", "blur", {"degrade.blur.sigam": 0.1}, "params.yaml: degrade.blur.sigam: unknown key (did you mean sigma?)"),
    ("degrade", "mask", {"degrade.mask.fracton": 0.9},
     "params.yaml: degrade.mask.fracton: unknown key (did you mean fraction?)"),
    ("degrade", "blur", {"degrade.blur.kernel": 3.7}, "params.yaml: degrade.blur.kernel: must be an integer, got 3.7"),
    ("degrade", "blur", {"degrade.blur.kernel": 4}, "params.yaml: degrade.blur.kernel: must be odd"),
    ("degrade", "blur", {"degrade.blur.sigma": 0}, "params.yaml: degrade.blur.sigma: must be a number greater than 0, or auto, got 0"),
    ("degrade", "mask", {"degrade.mask.fraction": 1.5}, "params.yaml: degrade.mask.fraction: must be less than 1"),
    ("degrade", "mask", {"degrade.mask.source": "disk"}, "params.yaml: degrade.mask.source: must be 'center', 'brush', 'file' or 'color', got 'disk'"),
    ("degrade", "blur", {"degrade.blur.type": "blurr"}, "params.yaml: degrade.blur.type: unknown degradation 'blurr' "
                                                         "(did you mean blur?)"),
    ("degrade", "blur", {"degrade.sr": {"type": "chain", "ops": ["grayscale", {"type": "downsample", "factor": 3}]}},
     "params.yaml: degrade.sr: factor 3 does not divide the 1024 px image"),
    ("degrade", "blur", {"degrade.sr": {"type": "chain", "ops": ["grayscale", {"type": "blur", "kernal": 3}]}},
     "params.yaml: degrade.sr.ops.1.kernal: unknown key (did you mean kernel?)"),
    ("degrade", "nosuchmode", {}, "params.yaml: degrade.nosuchmode: no such mode; modes: blur, grayscale, mask"),
    ("project", "nosuchmode", {}, "params.yaml: degrade.nosuchmode: no such mode"),
    ("project", "blur", {"project.default.num_steps": 12.9},
     "params.yaml: project.default.num_steps: must be an integer, got 12.9"),
    ("project", "blur", {"project.default.num_steps": "abc"},
     "params.yaml: project.default.num_steps: must be an integer, got 'abc'"),
    ("project", "blur", {"project.default.num_steps": 0},
     "params.yaml: project.default.num_steps: must be greater than or equal to 1"),
    ("project", "blur", {"project.default.lr_rampup_length": 0},
     "params.yaml: project.default.lr_rampup_length: must be greater than 0"),
    ("project", "blur", {"project.default.noise_ramp_length": 1.5},
     "params.yaml: project.default.noise_ramp_length: must be less than or equal to 1"),
    ("project", "blur", {"project.default.latent_space": "z"}, "params.yaml: project.default.latent_space: must be 'w'"),
    ("project", "blur", {"project.grayscale.num_step": 5},
     "params.yaml: project.grayscale.num_step: unknown key (did you mean num_steps?)"),
    ("project", "blur", {"project.grayscal": {}},
     "params.yaml: project.grayscal: unknown key: not a mode under degrade (did you mean grayscale?)"),
    ("project", "blur", {"project.runtime.batch_size": 0},
     "params.yaml: project.runtime.batch_size: must be auto or an integer from 1 to 1024, got 0"),
    ("project", "blur", {"project.runtime.workers": 1000000000},
     "params.yaml: project.runtime.workers: must be auto or an integer from 1 to 1024, got 1000000000"),
    ("project", "blur", {"project.runtime.workers": 64, "project.runtime.device": "cpu"},
     "params.yaml: project.runtime.workers: 64 workers, but this process may use"),
    ("synthetic", None, {"project.runtime.workers": 64, "project.runtime.device": "cpu"},
     "params.yaml: project.runtime.workers: 64 workers, but this process may use"),
    ("degrade", "mask", {"seeds.degrade": 4294967296},
     "params.yaml: seeds.degrade: must be less than or equal to 4294967295, got 4294967296"),
    ("benchmark", None, {"benchmark.seeds": [4294967296]},
     "params.yaml: benchmark.seeds.0: must be less than or equal to 4294967295"),
    ("project", "blur", {"project.default.num_steps": 10 ** 12},
     "params.yaml: project.default.num_steps: must be less than or equal to 100000"),
    ("project", "blur", {"project.default.method": "robst"},
     "params.yaml: project.default.method: must be 'official' or 'robust', got 'robst' (did you mean robust?)"),
    ("project", "blur", {"project.default.robust": {"steps": [150, 150, 150]}},
     "params.yaml: project.default.robust: got steps [150, 150, 150], which is gone: the robust method runs "
     "num_steps steps in all, shared by its phases as robust.phases says"),
    ("project", "blur", {"profile": "fast"}, "params.yaml: profile: must be 'auto', 'full' or 'quick', got 'fast'"),
    ("project", "mask", {"project.mask.init": "blur"},
     "params.yaml: project.starts.mask: must be data/projected/blur, because project.mask.init is blur"),
    ("project", "blur", {"degrade.sr4": {"type": "downsample", "factor": 4}},
     "params.yaml: project.sr4: missing: DVC's project@sr4 stage reads it; every mode under degrade needs its entry "
     "under project: sr4: {} (no overrides of project.default), and under project.starts: sr4: data/degraded/sr4"),
    ("project", "blur", {"degrade.sr4": {"type": "downsample", "factor": 4}, "project.sr4": {}},
     "params.yaml: project.starts.sr4: missing: every mode needs one, here data/degraded/sr4"),
    ("project", "blur", {"project.runtime.device": "gpu"}, "params.yaml: project.runtime.device: must be auto, cpu"),
    ("project", "blur", {"project.runtime.device": "cpu", "project.runtime.precision": "tf32"},
     "params.yaml: project.runtime.precision: tf32 is a CUDA tensor-core mode, and project.runtime.device is cpu"),
    ("project", "blur", {"project.default.batch_size": 2},
     "params.yaml: project.default.batch_size: unknown key"),
    ("synthetic", None, {"synthetic.num_steps": [10, 2.5]}, "params.yaml: synthetic.num_steps.1: must be an integer"),
    ("benchmark", None, {"benchmark.levels": ["XXL"]}, "params.yaml: benchmark.levels.0: must be 'XS', 'S', 'M', 'L' or 'XL'"),
    ("benchmark", None, {"benchmark.tasks": ["denoise"]}, "params.yaml: benchmark.tasks.0: must be 'upsample'"),
    ("benchmark", None, {"benchmark.methods": {"robust": {"methd": "robust"}}},
     "params.yaml: benchmark.methods.robust.methd: unknown key (did you mean method?)"),
    ("benchmark", None, {"benchmark.methods": {"robust": {"init": "blur"}}},
     "params.yaml: benchmark.methods.robust.init: the benchmark starts every method from w_avg"),
    ("benchmark", None, {"benchmark.budget": 0}, "params.yaml: benchmark.budget: must be greater than or equal to 1"),
    ("project", "blur", {"project.blur.init": "blurr"}, "params.yaml: project.blur.init: 'blurr' is not a mode under degrade (did you mean blur?)"),
    ("project", "blur", {"project.blur.init": "mask", "project.mask.init": "blur"},
     "params.yaml: project.blur.init: modes start from each other's results in a cycle: blur -> mask -> blur"),
    ("degrade", "blur", {"degrade.blur": {"type": "jpeg", "quality": 100}}, "params.yaml: degrade.blur.quality: must be less than or equal to 95"),
    ("degrade", "blur", {"degrade.blur": {"type": "poisson", "dropout": 1}}, "params.yaml: degrade.blur.dropout: must be"),
    ("report", None, {"report.identity": "yes"}, "params.yaml: report.identity: must be true or false, got 'yes'"),
    ("align", None, {"align.size": 32}, "params.yaml: align.size: renamed to align.resolution"),
    ("align", None, {"align.resolution": 48}, "params.yaml: align.resolution: must be a power of two"),
    ("align", None, {"align.detector": "mtcnn"}, "params.yaml: align.detector: must be 'hog' or 'cnn'"),
    ("download_weights", None, {"weights.vgg16.sha256": "abc"},
     "params.yaml: weights.vgg16.sha256: must be empty or 64 hexadecimal digits"),
    ("download_weights", None, {"wieghts": {}}, "params.yaml: wieghts: unknown key (did you mean weights?)"),
]
if not torch.cuda.is_available():
    BAD.append(("project", "blur", {"project.runtime.device": "cuda"},
                "params.yaml: project.runtime.device: cuda is not available on this machine"))
    BAD.append(("project", "blur", {"project.runtime.precision": "tf32"},      # device auto: the CPU here
                "params.yaml: project.runtime.precision: tf32: tf32 is a CUDA tensor-core mode (this stage runs on "
                "cpu)"))


PATHS = {  # as dvc.yaml's cmd gives them
    "download_weights": ["--out", "weights"],
    "align": ["--photos", "data/raw", "--out", "data/aligned", "--weights", "weights"],
    "degrade": ["--aligned", "data/aligned", "--out", "data/degraded/{mode}"],
    "project": ["--degraded", "data/degraded/{mode}", "--weights", "weights", "--out", "data/projected/{mode}",
                "--losses", "reports/losses/{mode}.csv"],
    "synthetic": ["--weights", "weights", "--out", "data/synthetic", "--losses", "reports/losses/synthetic.csv"],
    "benchmark": ["--weights", "weights", "--out", "data/benchmark"],
    "report": ["--data", "data", "--weights", "weights", "--results", "results", "--out", "reports"],
}


def stage_argv(stage: str, mode=None):
    return ([mode] if mode else []) + [a.format(mode=mode) for a in PATHS[stage]]


def run_stage(cwd: Path, stage: str, mode=None, timeout=120):
    """The real stage script in a process of its own (for the few smoke tests)."""
    cmd = [sys.executable, "-m", f"recon.stages.{stage}"] + stage_argv(stage, mode)
    env = dict(os.environ, RECON_NO_CUDA_OPS="1")
    env.pop("RECON_DEBUG", None)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def stage_module(stage: str):
    """A stage command as a module: its ``main(argv)`` is what DVC runs."""
    import importlib
    return importlib.import_module(f"recon.stages.{stage}")


def write_params(path: Path, data) -> None:
    yaml = YAML()
    with open(path, "w") as f:
        yaml.dump(data, f)


@pytest.fixture
def no_models(monkeypatch):
    """Loading a network fails the test: refusals must come before any model loads."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr("recon.model.checkpoint.build_generator", refuse)
    monkeypatch.setattr("torch.jit.load", refuse)
    monkeypatch.delenv("RECON_DEBUG", raising=False)


@pytest.mark.parametrize("stage,mode,changes,message", BAD, ids=[" ".join(map(str, c[2].items())) or c[1]
                                                                   for c in BAD])
def test_bad_params_are_refused_by_the_stage_before_any_work(tmp_path, monkeypatch, capsys, no_models, stage, mode,
                                                             changes, message):
    """Each stage's own entry point (in this process), as DVC runs it."""
    write_params(tmp_path / "params.yaml", edited(changes))
    monkeypatch.chdir(tmp_path)
    status = stage_module(stage).main(stage_argv(stage, mode))
    err = capsys.readouterr().err
    label = f"{stage} {mode}" if mode else stage
    assert status == 1, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"{label}: error: ") and message in lines[-1], err
    # nothing was made: no output folder appeared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_bad_param_through_the_real_script(tmp_path):
    """The smoke test of the above: the script in its own process, one line, exit status 1."""
    write_params(tmp_path / "params.yaml", edited({"project.default.num_steps": 12.9}))
    res = run_stage(tmp_path, "project", "blur")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("project blur: error: params.yaml: project.default.num_steps: "
                                                   "must be an integer, got 12.9")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_yaml_syntax_and_missing_file(tmp_path):
    (tmp_path / "params.yaml").write_text("align:\n  resolution: [1024\n")
    res = run_stage(tmp_path, "align")
    assert res.returncode == 1 and "align: error: params.yaml: not valid YAML" in res.stderr
    assert "Traceback" not in res.stderr
    (tmp_path / "params.yaml").unlink()
    res = run_stage(tmp_path, "align")
    assert res.returncode == 1 and "params.yaml: params file not found" in res.stderr


def test_resolution_mismatch_is_refused_at_align_time(tmp_path, monkeypatch, capsys):
    """Once download_weights has written the generator, align refuses an align.resolution that
    differs from it, before any photo is aligned."""
    from conftest import make_weights

    from recon.model.checkpoint import save_generator
    from recon.model.networks import Generator
    G = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=64, channel_max=8))
    save_generator(G, tmp_path / "g16.safetensors")
    make_weights(tmp_path / "weights", tmp_path / "g16.safetensors", resolution=16)
    write_params(tmp_path / "params.yaml", edited({"align.resolution": 32}))
    monkeypatch.chdir(tmp_path)
    assert stage_module("align").main(stage_argv("align")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("params.yaml: align.resolution: 32, but the generator (weights.generator.source) makes 16x16 "
            "images; set align.resolution: 16") in err
    assert not (tmp_path / "data").exists()


def test_the_defaults_and_overrides():
    p = load_params(ROOT / "params.yaml")
    assert p.project.for_mode("grayscale").latent_dist_reg_weight == 0.5
    assert p.project.for_mode("blur") == p.project.default
    assert p.project.default.regularize_noise_weight == 1e5 and isinstance(p.project.default.num_steps, int)
    assert [op.type for op in p.ops("blur")] == ["blur"] and p.ops("blur")[0].kernel == 21
    # one place for the op defaults
    q = parse_params(edited({"degrade.blur": {"type": "blur"}}))
    assert (q.ops("blur")[0].kernel, q.ops("blur")[0].sigma) == (21, 6.0)
    # a YAML float may be written as an integer
    assert parse_params(edited({"project.default.initial_learning_rate": 1})).project.default.initial_learning_rate == 1.0


def test_no_key_is_blind_to_dvc_run_cache():
    """DVC drops keys named size or nfiles from a stage's run-cache hash at any depth (see
    dvc/stage/cache.py): neither params.yaml nor the schema may have one."""
    def keys(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{prefix}{k}"
                yield from keys(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from keys(v, f"{prefix}{i}.")
    for key in list(keys(BASE)) + model_keys():
        assert key.split(".")[-1] not in DVC_BLIND_KEYS, key
    assert "align.resolution" in model_keys() and "degrade.<blur>.kernel" in model_keys()


def test_projector_config_refuses_what_params_refuse():
    with pytest.raises(ValueError, match="num_steps"):
        ProjectorConfig(num_steps=12.9)
    with pytest.raises(ValueError, match="optimize_noise"):
        ProjectorConfig(optimize_noise="no")


# ---------------------------------------------------------------------------------------------
# The runner

def test_runner_error_classes(capsys, monkeypatch):
    monkeypatch.delenv("RECON_DEBUG", raising=False)

    def fail(exc):
        def f():
            raise exc
        return f
    assert run("stage x", fail(PhotoError("a.png: cannot decode"))) == 1
    assert capsys.readouterr().err.strip() == "stage x: error: a.png: cannot decode"
    assert run("stage x", fail(FileNotFoundError(2, "No such file or directory", "w.pt"))) == 1
    assert "stage x: error: [Errno 2] No such file or directory: 'w.pt'" in capsys.readouterr().err
    assert run("stage x", fail(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err.strip() == f"stage x: {INTERRUPTED}"
    with pytest.raises(ZeroDivisionError):          # a bug keeps its traceback
        run("stage x", fail(ZeroDivisionError("bug")))
    monkeypatch.setenv("RECON_DEBUG", "1")
    assert run("stage x", fail(ParamsError("params.yaml: x: bad"))) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("stage x: error: params.yaml: x: bad")
    assert issubclass(ParamsError, ReconError) and issubclass(ParamsError, ValueError)


def test_ctrl_c_exits_130_with_a_resume_hint(tmp_path):
    script = ("import sys, time\nfrom recon.runner import run\n"
              "def work():\n    print('ready', flush=True)\n    time.sleep(60)\n"
              "sys.exit(run('project blur', work))\n")
    # a shell's background job has SIGINT ignored, and Python then keeps it ignored: restore it
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "project blur: interrupted: rerun to resume from the last snapshot" in err and "Traceback" not in err


@pytest.mark.skipif(shutil.which("git") is None, reason="git")
def test_cli_refuses_bad_options():
    res = subprocess.run([sys.executable, "-m", "recon.cli", "project", "x", "--generator", "g", "--vgg", "v",
                          "--out", "o", "--batch", "-1"], capture_output=True, text=True)
    assert res.returncode == 2 and "--batch: must be an integer >= 1, got '-1'" in res.stderr
