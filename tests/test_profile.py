"""recon.profile: a step cut into parts that account for the whole step."""
import json

import pytest

from recon import profile


@pytest.mark.parametrize("degrade", ["", "blur"])
def test_parts_sum_to_the_step(degrade):
    parts = profile.profile_shape("32:512:64", "fp32", steps=2, degrade=degrade)
    step = parts.pop("step")
    assert step > 0
    # medians of parts need not add up exactly; each step's parts do (checked below), so the
    # medians come close
    assert sum(parts.values()) == pytest.approx(step, rel=0.25)
    for r in (4, 8, 16, 32):
        assert parts[f"generator {r} px, forward"] > 0
        assert parts[f"generator {r} px, backward"] >= 0
    assert parts["VGG16, forward"] > 0 and parts["VGG16, backward"] > 0
    assert ("degradation, forward" in parts) == bool(degrade)
    # nothing measured twice: no part is negative beyond the clock's resolution
    assert min(parts.values()) > -2e-3


def test_one_step_adds_up(monkeypatch):
    import torch

    from recon.bench import random_generator, vgg_module
    from recon.config import ProjectorConfig
    from recon.restore import make_method
    from recon.restore.randomness import TorchRandom, step_draws

    G = random_generator(32, 512, 64, torch.device("cpu"))
    vgg, _ = vgg_module("", torch.device("cpu"))
    method = make_method(G, vgg, ProjectorConfig(num_steps=10, w_avg_samples=100, snapshot_every=0))
    rngs = [TorchRandom(0)]
    run = method.start(torch.rand(1, 3, 32, 32) * 2 - 1, None, rngs, None)
    parts = profile.step_parts(method, run, step_draws(rngs, 0))
    step = parts.pop("step")
    assert sum(parts.values()) == pytest.approx(step, abs=1e-9)


def test_table_and_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert profile.main(["--shapes", "32:512:64", "--steps", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| generator 32 px, forward |" in text and "| step |" in text
    assert "100.0 %" in text.splitlines()[-1]
    data = json.loads(out.read_text())
    assert set(data) == {"32:512:64 fp32"}
