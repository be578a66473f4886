"""The report renders in a real browser: headless Chromium loads the self-contained page from a
folder with nothing else in it and takes a screenshot (skipped when no Chromium is installed)."""
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def make_report(tmp_path):
    """A minimal pipeline output tree with one face, then the real report builder on it."""
    from recon.data.imageio import save_png, write_json
    from recon.report.render import build_report
    rng = np.random.RandomState(0)
    face = (rng.rand(64, 64, 3) * 255).astype(np.uint8)
    face[16:48, 16:48] = (220, 40, 40)
    data = tmp_path / "data"
    save_png(data / "aligned" / "p_0.png", face)
    save_png(data / "degraded" / "blur" / "p_0.png", face // 2)
    faces = []
    for k, scale in enumerate((1.0, 3.0)):
        name = f"p_{k}"
        save_png(data / "degraded" / "blur" / f"{name}.png", face // 2)
        out = data / "projected" / "blur" / name
        save_png(out / "image.png", face)
        save_png(out / "degraded.png", face // 2)
        for phase in ("W", "W+"):                       # a robust mode's widest table: its phases too
            save_png(out / f"image_{phase}.png", face)
        rows = "".join(f"{i},{10 * scale / (i + 1)},{scale / (i + 1)},0.1,0\n" for i in range(20))
        (out / "loss.csv").write_text("step,loss,dist,noise_reg,latent_reg\n" + rows)
        write_json(out / "done.json", {})
        faces.append(dict(name=name, source=str(data / "aligned" / "p_0.png"), photo="p.png",
                          quad=[[0, 0], [0, 63], [63, 63], [63, 0]], degraded=f"{name}.png", mask=None))
    write_json(data / "degraded" / "blur" / "targets.json", dict(mode="blur", ops=[{"type": "blur"}], faces=faces))
    # a 2 x 2 study with one seed; the (20 steps, reg 0.01) cell is best
    syn = data / "synthetic"
    save_png(syn / "truth" / "seed0000.png", face)
    runs = {}
    for steps in (10, 20):
        for reg in (0.0, 0.01):
            tag = f"steps{steps}_reg{reg:g}"
            good = steps == 20 and reg == 0.01
            save_png(syn / tag / "seed0000" / "image.png", face if good else face // 3)
            (syn / tag / "seed0000" / "loss.csv").write_text(
                "step,loss,dist,noise_reg,latent_reg\n" + "".join(f"{i},{1 / (i + 1)},{1 / (i + 1)},0,0\n"
                                                                  for i in range(steps)))
            runs[tag] = dict(num_steps=steps, latent_dist_reg_weight=reg, faces=["seed0000"])
    write_json(syn / "runs.json", dict(seeds=[0], truncation_psi=0.7, runs=runs))
    # a benchmark of the default's breadth: nine tasks, five methods (a samples method's mean row too)
    methods = ["official", "robust", "robust_tune", "robust_samples", "robust_samples mean"]
    cells = [f"{t}-M" for t in ("upsample", "noise", "jpeg", "inpaint_brush", "inpaint_center", "blur", "blur_blind",
                                "upsample_blind")] + ["grayscale"]
    scores = dict(psnr=21.5, ssim=0.61, lpips=0.31, identity=0.45, seconds=123.4)
    table = {c: {n: dict(scores) for n in ["input"] + methods} for c in cells}
    blind = [dict(task="blur_blind", level="M", method=n, known=dict(scores),
                  blind=dict(scores, sigma=5.8, sigma_true=6.0, sigma_error=0.2)) for n in methods]
    write_json(data / "benchmark" / "results.json", dict(
        seeds=[0], truncation_psi=0.7, budget=450, resolution=64, methods={n: {} for n in methods[:-1]}, rows=methods,
        table=table, headline={n: dict(scores, lpips_wins=1) for n in ["input"] + methods}, blind=blind))
    save_png(tmp_path / "raw" / "p.png", np.full((80, 80, 3), 128, np.uint8))
    from recon.config import Report
    from recon.pipeline.results import results_stage
    results_stage(["blur"], data, tmp_path / "raw", tmp_path / "results")
    build_report(["blur"], data, tmp_path / "reports", "degrade: {}", Report(identity=False),
                 results_dir=tmp_path / "results")
    page = tmp_path / "alone" / "index.html"
    page.parent.mkdir()
    shutil.copy(tmp_path / "reports" / "index.html", page)  # nothing beside it: it must stand alone
    return page


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed")
def test_report_renders_in_headless_chromium(tmp_path):
    page = make_report(tmp_path)
    shot = tmp_path / "shot.png"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000", f"--screenshot={shot}",
           page.as_uri()]
    subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file()
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (3000, 1200)
    # The embedded face images really render: the red square appears on the white page.
    red = (img[..., 0] > 180) & (img[..., 1] < 90) & (img[..., 2] < 90)
    assert red.sum() > 500
    assert (img > 240).all(-1).mean() > 0.3  # and the page itself is there (white background)

    def colour(rgb, tol=30):
        return (np.abs(img - np.array(rgb)) <= tol).all(-1).sum()
    # one line per face in the loss figure: matplotlib's first two colours both drawn
    assert colour((31, 119, 180)) > 150 and colour((255, 127, 14)) > 150
    # the study grid with its best cell outlined in green
    assert colour((26, 127, 55), tol=12) > 300
    text = page.read_text()
    assert "What the numbers mean" in text and "★ best" in text and text.count("<tr><th>num_steps") == 2


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed")
def test_report_fits_a_1400_px_window(tmp_path):
    """Nothing overflows sideways at 1400 px: the page's scroll width is its client width, and
    every table's box ends inside the page, with no scrolling box of its own."""
    page = make_report(tmp_path)
    probe = page.with_name("probe.html")
    script = ("<script>var w = document.documentElement.clientWidth, bad = [];"
              "document.querySelectorAll('table').forEach(function (t, i) {"
              "  var r = t.getBoundingClientRect(); if (r.right > w + 0.5) bad.push('table' + i + ':' + r.right); });"
              "document.querySelectorAll('*').forEach(function (e) {"
              "  if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX != 'visible')"
              "    bad.push(e.tagName + '.' + e.className + ':' + e.scrollWidth); });"
              "document.body.setAttribute('data-fit', document.documentElement.scrollWidth + ' ' + w);"
              "document.body.setAttribute('data-bad', bad.join(',') || 'none');"
              "document.body.setAttribute('data-tables', document.querySelectorAll('table').length);</script></body>")
    probe.write_text(page.read_text().replace("</body>", script))
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1400,1000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    import re
    scroll, client = map(int, re.search(r'data-fit="(\d+) (\d+)"', dom).groups())
    assert client > 1300 and scroll <= client, (scroll, client)
    assert re.search(r'data-bad="([^"]*)"', dom).group(1) == "none"
    assert int(re.search(r'data-tables="(\d+)"', dom).group(1)) >= 10        # the summary, faces, study, benchmark
