"""The benchmark: task levels, equal budgets (counted as the generator's forward passes with
gradient), scores against the truth, and finished cells kept across runs."""
import json

import pytest
import torch
from tiny_vgg import TinyLPIPS

import recon
from recon.config import BlurOp, JpegOp, MaskOp, PoissonOp, ProjectorConfig, RobustConfig, parse_params
from recon.metrics import LPIPSMetric
from recon.pipeline.benchmark import Cell, budgeted, cells, run_benchmark, task_degradation
from recon.restore import make_method
from recon.restore.method import Method


@pytest.fixture(scope="module")
def models(golden_dir):
    G = recon.load_generator(golden_dir / "official_format.pkl")
    vgg = torch.jit.script(TinyLPIPS(0).eval())
    return G, vgg, LPIPSMetric(vgg)


def test_levels_follow_the_reference_benchmark():
    ops = {lv: task_degradation(Cell("upsample", lv), 1024, 1).ops[0] for lv in ("XS", "S", "M", "L", "XL")}
    assert [o.factor for o in ops.values()] == [2, 4, 8, 16, 32] and ops["M"].filter == "bicubic"
    assert task_degradation(Cell("noise", "XL"), 64, 0).ops == [PoissonOp(photons=6, dropout=0.64)]
    assert task_degradation(Cell("jpeg", "S"), 64, 0).ops == [JpegOp(quality=15)]
    brush = task_degradation(Cell("inpaint_brush", "L"), 64, 3)
    assert brush.ops == [MaskOp(source="brush", strokes=13)] and brush.masks.shape == (1, 1, 64, 64)
    assert not torch.equal(brush.masks, task_degradation(Cell("inpaint_brush", "L"), 64, 4).masks)  # per face
    assert task_degradation(Cell("blur", "M"), 1024, 0).ops == [BlurOp(kernel=21, sigma=6.0)]
    assert task_degradation(Cell("blur", "XL"), 32, 0).ops[0].kernel == 31          # fits a small image
    p = parse_params({"benchmark": {"tasks": ["grayscale", "jpeg"], "levels": ["S", "M"]}})
    assert [c.name for c in cells(p.benchmark)] == ["grayscale", "jpeg-S", "jpeg-M"]


def test_equal_budgets_count_generator_passes(models):
    G, vgg, _ = models
    official = budgeted(ProjectorConfig(w_avg_samples=200), 10)
    robust = budgeted(ProjectorConfig(method="robust", robust=RobustConfig(min_loss_res=4)), 10)
    from recon.restore.robust import phase_steps
    assert official.num_steps == 10 and robust.num_steps == 10 and phase_steps(10, robust.robust.phases) == [3, 3, 4]
    d = task_degradation(Cell("blur", "M"), G.img_resolution, 0)
    target = d.target(G.synthesis(G.mapping(torch.randn(1, G.z_dim), None), noise_mode="const")).detach()
    for cfg in (official, robust):
        passes = []
        hook = G.synthesis.register_forward_hook(lambda *a: passes.append(torch.is_grad_enabled()))
        try:
            make_method(G, vgg, cfg).restore(target, d, names=["t"])
        finally:
            hook.remove()
        assert sum(passes) == 10, (cfg.method, passes)


def test_cells_are_scored_and_kept(models, tmp_path, monkeypatch):
    G, vgg, lpips = models
    p = parse_params({"profile": "full",            # as written (auto would cut the seeds to one on a CPU)
                      "align": {"resolution": 32}, "project": {"default": {"w_avg_samples": 200}},
                      "benchmark": {"seeds": [0, 1], "tasks": ["inpaint_center", "noise", "upsample"], "levels": ["M"],
                                    "budget": 4, "identity": False,
                                    "methods": {"official": {}, "robust": {"method": "robust",
                                                                          "robust": {"min_loss_res": 4}}}}})
    methods = p.benchmark_methods()
    doc = run_benchmark(p.benchmark, methods, G, vgg, lpips, tmp_path / "b")
    assert set(doc["table"]) == {"inpaint_center-M", "noise-M", "upsample-M"}
    for cell in doc["table"].values():
        assert set(cell) == {"input", "official", "robust"}
        for name in ("official", "robust"):
            assert set(cell[name]) >= {"psnr", "ssim", "lpips", "seconds"} and cell[name]["identity"] is None
    assert doc["headline"]["official"]["lpips_wins"] + doc["headline"]["robust"]["lpips_wins"] == 3
    # the input row scores the degraded target itself
    from recon.data.imageio import load_photo
    from recon.metrics import at_size, psnr
    t, _ = load_photo(tmp_path / "b" / "noise-M" / "target" / "seed0001.png")
    g, _ = load_photo(tmp_path / "b" / "truth" / "seed0001.png")
    assert doc["cells"]["noise-M"]["input"]["per_seed"]["1"]["psnr"] == pytest.approx(psnr(t, g))
    # a smaller observation (upsampling task) is scored bicubic-upscaled, the naive baseline
    small, _ = load_photo(tmp_path / "b" / "upsample-M" / "target" / "seed0001.png")
    assert small.shape[0] < g.shape[0]
    assert doc["cells"]["upsample-M"]["input"]["per_seed"]["1"]["psnr"] == pytest.approx(psnr(at_size(small, 32), g))

    # a second run restores nothing and gives the same table; batching does not change results
    monkeypatch.setattr(Method, "restore", lambda *a, **k: pytest.fail("restored a finished cell"))
    again = run_benchmark(p.benchmark, methods, G, vgg, lpips, tmp_path / "b", batch_size=2)
    assert again["table"] == json.loads(json.dumps(doc["table"]))
    monkeypatch.undo()
    # a damaged cell (an image replaced) is restored again, alone, to the same bytes
    img = tmp_path / "b" / "noise-M" / "robust" / "seed0000.png"
    good = img.read_bytes()
    img.write_bytes((tmp_path / "b" / "noise-M" / "official" / "seed0000.png").read_bytes())
    redone = []
    real = Method.restore
    monkeypatch.setattr(Method, "restore", lambda self, *a, **k: redone.append(self.name) or real(self, *a, **k))
    run_benchmark(p.benchmark, methods, G, vgg, lpips, tmp_path / "b")
    assert redone == ["robust"] * 2 and img.read_bytes() == good          # its two seeds, one at a time
    (tmp_path / "b" / "noise-M" / "official" / "cell.json").write_text("{trunc")
    redone.clear()
    run_benchmark(p.benchmark, methods, G, vgg, lpips, tmp_path / "b")
    assert redone == ["official"] * 2
    monkeypatch.undo()
    batched = run_benchmark(p.benchmark, methods, G, vgg, lpips, tmp_path / "c", batch_size=2)
    for cell, by in doc["table"].items():
        for name in ("official", "robust"):
            assert batched["table"][cell][name]["psnr"] == pytest.approx(by[name]["psnr"], abs=0.05)
