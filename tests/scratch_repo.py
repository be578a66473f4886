"""A scratch copy of the project as a git + DVC repository, with tiny weights in the official
formats served through file:// URLs and some of the sample photos: what the end-to-end
tests run `dvc repro` and the stage commands in."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT


def sh(cmd, cwd, env, check=True, timeout=900):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                             f"{res.stderr[-6000:]}")
    return res


def ran_stages(output: str):
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_params(path: Path, updates: dict):
    from ruamel.yaml import YAML
    yaml = YAML()
    data = yaml.load(path.read_text())
    for dotted, value in updates.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with open(path, "w") as f:
        yaml.dump(data, f)


def make_repo(work: Path, photos, params: dict, resolution: int = 32):
    """``(repo, env)``: the checkout's tracked files, of its sample photos in data/raw only
    ``photos``, tiny weights (a ``resolution`` px generator), ``params`` applied, committed."""
    repo = work / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        if f.startswith("tests/"):              # the project needs no tests (nor their 15 MB of fixtures)
            continue
        src = ROOT / f
        if src.is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / f)
    raw = repo / "data" / "raw"
    for p in raw.iterdir():
        if p.suffix != ".md" and p.name not in photos:
            p.unlink()
    assert sorted(p.name for p in raw.iterdir() if p.suffix != ".md") == sorted(photos)

    from official_format import write_official_pkl
    from tiny_vgg import write_tiny_vgg

    from recon.model.networks import Generator
    torch.manual_seed(0)
    G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=256 * resolution // 32, channel_max=32)).eval()
    served = work / "served"
    served.mkdir()
    write_official_pkl(served / "tiny-ffhq.pkl", G)
    write_tiny_vgg(served / "tiny-vgg16.pt")
    set_params(repo / "params.yaml", {"weights.generator.source": (served / "tiny-ffhq.pkl").as_uri(),
                                      "weights.vgg16.source": (served / "tiny-vgg16.pt").as_uri(),
                                      "align.resolution": resolution, **params})
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               RECON_NO_CUDA_OPS="1")
    env.pop("PYTHONPATH", None)
    sh(["git", "init", "-q"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "scratch copy"], repo, env)
    return repo, env
