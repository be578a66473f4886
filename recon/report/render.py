"""The report stage's page: one self-contained HTML file, DVC metrics and the per-face detail.

``reports/index.html`` embeds every image (base64), so it can be mailed or archived alone.
``reports/metrics.json`` holds the headline numbers (what ``dvc exp show`` shows as columns: per
mode PSNR and LPIPS), ``reports/metrics_study.json`` the study's best cell and the benchmark's
methods;
``reports/metrics_detail.json`` every metric of every face and cell. Everything shown is computed
in :mod:`.scores`; this module only lays it out.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from recon.data.align import paste_back
from recon.data.imageio import load_photo, write_atomic
from recon.metrics import GLOSSARY
from recon.pipeline.benchmark import MEAN_ROW
from recon.restore.method import UNCERTAINTY_FULL_SCALE

from .scores import ModeScores, best_lpips, score_mode, score_synthetic

IMAGE_PX = 128        # shown size of a face in the tables (a 1400 px window shows a row whole)


def _b64(img: np.ndarray, fmt: str = "PNG", max_side: Optional[int] = None) -> str:
    im = Image.fromarray(img)
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _img_tag(img: np.ndarray, title: str = "", size: int = IMAGE_PX, fmt: str = "PNG", max_side: int = 256) -> str:
    return (f'<img src="{_b64(img, fmt, max_side)}" width="{size}" title="{html.escape(title)}" '
            f'alt="{html.escape(title)}">')


def _figure_tag(fig, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="{html.escape(alt)}">'


def _plot_curves(curves: Dict[str, List[float]], title: str, small: bool = False,
                 phases: Optional[Dict[str, int]] = None) -> str:
    """One line per face: the distance column of its ``loss.csv`` (the loss without its weighted
    regularizers, which would otherwise dominate and stack every curve on one line); ``phases``
    (name -> first step) are marked with vertical lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.6, 1.7) if small else (6.4, 3.4), dpi=100)
    for name, ys in curves.items():
        ax.plot(range(len(ys)), ys, label=name, linewidth=1.0 if small else 1.4)
    ax.set_yscale("log")
    for name, start in (phases or {}).items():
        ax.axvline(start, color="0.6", linewidth=0.8, linestyle=":")
        ax.annotate(name, (start, 1), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=7, color="0.35")
    ax.set_xlabel("step", fontsize=7 if small else 10)
    ax.set_ylabel("distance (log)", fontsize=7 if small else 10)
    ax.tick_params(labelsize=6 if small else 9)
    ax.set_title(title, fontsize=8 if small else 11)
    if not small and len(curves) <= 16:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _figure_tag(fig, title)


def _fmt(v, key: str = "") -> str:
    """A metric value with its unit."""
    if v is None:
        return "–"
    unit = GLOSSARY.get(key, ("", "", "", ""))[1]
    if isinstance(v, float) and math.isinf(v):
        text = "inf"
    elif isinstance(v, float):
        text = f"{v:.2f}" if unit == "dB" else f"{v:.3f}"
    else:
        text = str(v)
    return f"{text} {unit}".strip()


def _metric_rows(m: dict) -> str:
    return "<br>".join(f'<span title="{html.escape(GLOSSARY[k][3])}">{html.escape(GLOSSARY[k][0])}: '
                       f"{_fmt(v, k)}</span>" for k, v in m.items() if k in GLOSSARY)


def describe_ops(ops) -> str:
    """``blur (kernel 21, sigma 6.0), grayscale``: a mode's typed ops in words."""
    parts = []
    for op in ops:
        fields = {k: v for k, v in op.model_dump().items() if k != "type"}
        parts.append(op.type + (f" ({', '.join(f'{k} {v}' for k, v in fields.items())})" if fields else ""))
    return ", ".join(parts) or "none (plain reconstruction)"


ROLE_HEADS = {"original": "Original", "degraded": "Original degraded", "generated": "Generated",
              "generated degraded": "Generated degraded", "samples mean": "Mean of the samples",
              "uncertainty": f"Uncertainty (samples' std; white = {UNCERTAINTY_FULL_SCALE:g})"}


def mode_section(s: ModeScores, raw_dir: Path) -> str:
    rows: List[str] = []
    pasted_into: Dict[str, list] = {}
    heads: List[str] = []
    for face in s.faces:
        images = s.images(face)
        if not heads:
            heads = list(images)
        cells = "".join(f"<td>{_img_tag(images[r], r)}</td>" if r in images else "<td></td>" for r in heads)
        rows.append(f"<tr><th>{html.escape(face.target.name)}</th>{cells}<td class=m>{_metric_rows(face.metrics)}"
                    "</td></tr>")
        # paste back what is shown as the result: the composite where the mode has one
        pasted_into.setdefault(face.target.photo, []).append((face.target.quad, images.get("composited",
                                                                                           images["generated"])))

    def head(role):
        if role == "degraded" and s.observed:
            return "Observed photo"
        if role == "composited" and s.composite is not None:
            return f"Composited ({s.composite[0]})"
        return ROLE_HEADS.get(role, role)
    section = [f'<h2 id="{html.escape(s.mode)}">{html.escape(s.mode)}</h2>',
               f"<p>operations: {html.escape(describe_ops(s.ops))}."
               + (" The photos were already degraded (observed): no ground truth, so only consistency with the "
                  "photo and identity are measured." if s.observed else "") + "</p>",
               f"<p class=means>mean over {len(s.faces)} faces: {_metric_rows(s.means).replace('<br>', ' · ')}</p>"]
    if s.skipped:
        section.append("<p class=skipped>Skipped (not a usable target of this mode): " + "; ".join(
            f"{html.escape(k['name'])}: {html.escape(k['reason'])}" for k in s.skipped) + "</p>")
    section += [f"<table><tr><th>face</th>{''.join(f'<th>{html.escape(head(r))}</th>' for r in heads)}"
                "<th>metrics</th></tr>", *rows, "</table>"]
    curves = {f.target.name: f.curve for f in s.faces}
    phases = next((f.phases for f in s.faces if f.phases), {})
    if curves:
        section.append(_plot_curves(curves, f"{s.mode}: distance per face (the loss without regularizers)",
                                    phases=phases))
    pasted = []
    for photo, items in sorted(pasted_into.items()):
        path = raw_dir / photo
        if not path.is_file() or any(q is None for q, _ in items):
            continue
        rgb, _ = load_photo(path)
        restored = rgb
        for quad, face_img in items:
            restored = paste_back(restored, face_img, np.asarray(quad))
        pasted.append(f"<tr><th>{html.escape(photo)}</th><td>{_img_tag(rgb, 'original', 360, 'JPEG', 720)}</td>"
                      f"<td>{_img_tag(restored, 'restored', 360, 'JPEG', 720)}</td></tr>")
    if pasted:
        what = f"the composited result ({s.composite[0]})" if s.composite else "the generated face"
        section += [f"<h3>Pasted back into the photos</h3><p>Pasted: {what}.</p><table><tr><th>photo</th>"
                    "<th>original</th><th>restored</th></tr>", *pasted, "</table>"]
    return "\n".join(section)


def synthetic_section(synthetic_dir: Path):
    """The study as a grid: one row per num_steps, one column per latent_dist_reg_weight; each
    cell holds the generated images of every seed with their PSNR and a small loss plot; the
    sampled truth beside the grid; the best cell (highest mean PSNR) marked."""
    runs, cells, best = score_synthetic(synthetic_dir)
    seeds = [f"seed{s:04d}" for s in runs["seeds"]]
    truth_cells = "".join(f"<figure>{_img_tag(load_photo(synthetic_dir / 'truth' / f'{s}.png')[0], s, 96)}"
                          f"<figcaption>{s}</figcaption></figure>" for s in seeds)
    steps = sorted({k[0] for k in cells})
    regs = sorted({k[1] for k in cells})
    head = "".join(f"<th>latent_dist_reg_weight {r:g}</th>" for r in regs)
    rows = []
    for n in steps:
        tds = []
        for r in regs:
            c = cells.get((n, r))
            if c is None:
                tds.append("<td></td>")
                continue
            figs = "".join(f"<figure>{_img_tag(load_photo(synthetic_dir / c.tag / s / 'image.png')[0], s, 96)}"
                           f"<figcaption>{_fmt(c.per_seed[s], 'psnr')}</figcaption></figure>" for s in seeds)
            plot = _plot_curves(c.curves, f"steps {n}, reg {r:g}", small=True)
            mark, star = (" class=best", " ★ best") if (n, r) == best else ("", "")
            tds.append(f"<td{mark}><div class=imgs>{figs}</div><b>mean {_fmt(c.psnr, 'psnr')}{star}</b><br>{plot}</td>")
        rows.append(f"<tr><th>num_steps {n}</th>{''.join(tds)}</tr>")
    body = ['<h2 id="synthetic">Synthetic study: num_steps × latent_dist_reg_weight</h2>',
            f"<p>Faces sampled from the generator (truncation psi {runs['truncation_psi']}), then restored; PSNR "
            "against the sampled truth. The best cell (highest mean PSNR) is marked.</p>",
            f"<div class=study><div class=truth><b>truth</b>{truth_cells}</div>",
            f"<table><tr><th></th>{head}</tr>", *rows, "</table></div>"]
    detail = {c.tag: dict(psnr=c.psnr, num_steps=n, latent_dist_reg_weight=r) for (n, r), c in cells.items()}
    return "\n".join(body), detail, cells[best]


def benchmark_section(bench_dir: Path):
    """The methods compared: one row per task and level, per method its mean PSNR, SSIM, LPIPS,
    identity and seconds per restoration (the best LPIPS of a row marked), a plot of LPIPS per
    row, and the first seed's images. Returns ``(html, results.json)``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads((bench_dir / "results.json").read_text())
    methods = list(res.get("rows", res["methods"]))    # a samples method has a second row, its mean
    table, headline = res["table"], res["headline"]
    cols = ("psnr", "ssim", "lpips", "identity")
    present = [c for c in cols if any(c in v for t in table.values() for v in t.values())]
    head = "".join(f"<th colspan={len(present) + (name != 'input')}>{html.escape(name)}</th>"
                   for name in ["input"] + methods)
    sub = "".join("".join(f"<th>{GLOSSARY[c][0]}</th>" for c in present) + ("<th>s</th>" if name != "input" else "")
                  for name in ["input"] + methods)
    rows, strips = [], []
    seed0 = f"seed{res['seeds'][0]:04d}"
    for cell, by in table.items():
        best = best_lpips(by, methods)
        tds = []
        for name in ["input"] + methods:
            v = by.get(name, {})
            tds += [f"<td{' class=best' if name == best and c == 'lpips' else ''}>{_fmt(v.get(c), c)}</td>"
                    for c in present]
            if name != "input":
                tds.append(f"<td>{_fmt(v.get('seconds'))}</td>")
        rows.append(f"<tr><th>{html.escape(cell)}</th>{''.join(tds)}</tr>")
        imgs = [(bench_dir / "truth" / f"{seed0}.png", "truth"),
                (bench_dir / cell / "target" / f"{seed0}.png", "input")]
        imgs += [(bench_dir / cell / n.removesuffix(MEAN_ROW) / f"{seed0}{'_mean' if n.endswith(MEAN_ROW) else ''}.png",
                  n) for n in methods]
        figs = "".join(f"<figure>{_img_tag(load_photo(p)[0], t, 96)}<figcaption>{html.escape(t)}</figcaption></figure>"
                       for p, t in imgs if p.is_file())
        strips.append(f"<tr><th>{html.escape(cell)}</th><td class=imgs>{figs}</td></tr>")
    means = "".join(f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{_fmt(headline.get(n, {}).get(c), c)}</td>"
                                                              for c in present)
                    + f"<td>{headline.get(n, {}).get('lpips_wins', '–')}</td></tr>" for n in ["input"] + methods)

    fig, ax = plt.subplots(figsize=(min(13, max(6, 0.6 * len(table) * (len(methods) + 1))), 3.2))
    width = 0.8 / (len(methods) + 1)
    for k, name in enumerate(["input"] + methods):
        ys = [table[c].get(name, {}).get("lpips") for c in table]
        ax.bar([i + k * width for i in range(len(table))], [y if y is not None else 0 for y in ys], width, label=name)
    ax.set_xticks([i + width * len(methods) / 2 for i in range(len(table))], list(table), rotation=30, ha="right")
    ax.set_ylabel("LPIPS to the truth (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = _figure_tag(fig, "LPIPS per task and method")
    body = ['<h2 id="benchmark">Benchmark: which method restores better, at what cost</h2>',
            f"<p>{len(res['seeds'])} faces sampled from the generator (truncation psi {res['truncation_psi']}, "
            f"{res['resolution']} px), degraded per task and level, restored by each method with the same budget of "
            f"{res['budget']} generator forward+backward passes per face; scores against the sampled truth, mean "
            "over faces (<i>input</i>: the degraded input itself). The best LPIPS of each row is marked; "
            "<i>s</i>: seconds per restoration on the machine that ran it. Posterior samples share the budget "
            "(each of K samples gets 1/K of it); their row is the sample that agrees best with the observation, "
            "<i>mean</i> the per-pixel mean of the samples. A tuning phase's passes count in the budget.</p>",
            "<p>What these rows can show depends on the generator: the truth is sampled from it, so they measure "
            "how well each method recovers a face the generator can make from what the degradation left. With a "
            "published FFHQ network that includes face quality and identity; with a test generator (random "
            "weights, as in recon's tests and a first quick run on one) they show behaviour only (which method "
            "gets closer to a known truth at a given cost), not how faces look, and identity distances mean "
            "nothing there.</p>",
            f"<table><tr><th>mean over rows</th>{''.join(f'<th>{GLOSSARY[c][0]}</th>' for c in present)}"
            f"<th>rows won (LPIPS)</th></tr>{means}</table>",
            f"<div class=wide><table><tr><th rowspan=2>task</th>{head}</tr><tr>{sub}</tr>", *rows, "</table></div>",
            plot, blind_table(res.get("blind", []), present), f"<h3>{seed0}</h3><table>", *strips, "</table>"]
    return "\n".join(body), res


def blind_table(rows: List[dict], scores) -> str:
    """Blind restorations beside the known ones (the same targets and budget): per task, level and
    method, what was estimated against the truth, and each score known | blind."""
    if not rows:
        return ""
    out = ["<h3>Blind vs known</h3><p>The same targets restored knowing the degradation and not knowing it: "
           "<i>blur_blind</i> estimates each face's sigma with its latent (in px at the generator's resolution), "
           "<i>upsample_blind</i> finds the factor from the observation's size. Each score: known | blind.</p>",
           "<table><tr><th>task</th><th>level</th><th>method</th><th>true</th><th>found</th><th>error</th>"
           + "".join(f"<th>{GLOSSARY[c][0]} known | blind</th>" for c in scores) + "</tr>"]
    for r in rows:
        b = r["blind"]
        if "sigma" in b:
            true, found, err = f"sigma {b['sigma_true']:g}", f"{b['sigma']:.2f}", f"{b['sigma_error']:.2f}"
        else:
            true, found = f"x{b.get('factor_true', 0):g}", f"x{b.get('factor', 0):g}"
            err = f"{abs(b.get('factor', 0) - b.get('factor_true', 0)):g}"
        cells = "".join(f"<td>{_fmt(r['known'].get(c), c)} | {_fmt(b.get(c), c)}</td>" for c in scores)
        out.append(f"<tr><th>{html.escape(r['task'])}</th><td>{html.escape(r['level'])}</td>"
                   f"<td>{html.escape(r['method'])}</td><td>{true}</td><td>{found}</td><td>{err}</td>{cells}</tr>")
    return "\n".join(out + ["</table>"])


def glossary_section() -> str:
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{unit or '–'}</td><td>{better}</td>"
                   f"<td>{html.escape(meaning)}</td></tr>" for label, unit, better, meaning in GLOSSARY.values())
    return ('<h2 id="glossary">What the numbers mean</h2><table class=glossary><tr><th>metric</th><th>unit</th>'
            f"<th>better</th><th>meaning</th></tr>{rows}</table>")


def header_section(weights: Optional[dict], photos: Optional[dict]) -> str:
    """When, from which revision, with which weights; the photos that gave no face."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    lines = [f"made {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
             + (f" from git revision {html.escape(rev)}" if rev else "")]
    for key, w in (weights or {}).items():
        lines.append(f"{html.escape(key)}: {html.escape(str(w.get('source', '?')))} "
                     f"(sha256 {html.escape(str(w.get('sha256', '?'))[:16])}…)")
    if photos:
        if photos.get("no_face"):
            lines.append("no face found in: " + html.escape(", ".join(photos["no_face"])))
        if photos.get("unreadable"):
            lines.append("unreadable photos: " + html.escape("; ".join(f"{u['photo']} ({u['reason']})"
                                                                      for u in photos["unreadable"])))
    return "<p class=header>" + "<br>".join(lines) + "</p>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1320px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}
td.m{font-size:12px;min-width:190px}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}
img{max-width:100%;height:auto}figure{display:inline-block;margin:2px;text-align:center}figcaption{font-size:11px}
td.best{outline:3px solid #1a7f37;background:#eefbf0}.study{display:flex;gap:1em;align-items:flex-start}
.truth{display:flex;flex-direction:column;margin-top:1em}.imgs{white-space:nowrap}.wide{overflow-x:auto}
table.glossary td{font-size:13px}p.means{font-size:14px}p.header,p.skipped{font-size:13px;color:#444}"""

HEADLINE = ("psnr", "lpips")              # per mode in metrics.json; the rest is in metrics_detail.json


def build_report(modes: List[str], data_dir, raw_dir, out_dir, params_text: str = "", report=None,
                 vgg=None, weights: Optional[dict] = None) -> dict:
    """Write ``index.html`` (self-contained), the DVC metrics ``metrics.json`` (per mode PSNR and
    LPIPS; consistency LPIPS for observed photos) and ``metrics_study.json`` (the study's best cell,
    each benchmark method's LPIPS and PSNR), and ``metrics_detail.json`` (every face and cell). ``vgg``:
    NVIDIA's ``vgg16.pt``, for LPIPS (left out without it); ``weights``: the download_weights
    record, named in the header. Returns the headline metrics."""
    from recon.config import Report
    from recon.metrics import LPIPSMetric

    report = report if report is not None else Report()
    lpips = LPIPSMetric(vgg) if vgg is not None else None
    data_dir, raw_dir, out_dir = Path(data_dir), Path(raw_dir), Path(out_dir)
    sections: List[str] = []
    detail: Dict[str, Any] = {}
    headline: Dict[str, Any] = {}
    for mode in modes:
        d, p = data_dir / "degraded" / mode, data_dir / "projected" / mode
        if not (d / "targets.json").is_file():
            continue
        scores = score_mode(mode, d, p, report.identity, lpips)
        sections.append(mode_section(scores, raw_dir))
        means = scores.means
        detail[mode] = dict(mean=means, faces={f.target.name: f.metrics for f in scores.faces}, skipped=scores.skipped)
        keys = HEADLINE if "psnr" in means else ("lpips_consistency",)
        headline[mode] = {k: means[k] for k in keys if k in means}
    if (data_dir / "synthetic" / "runs.json").is_file():
        text, cells, best = synthetic_section(data_dir / "synthetic")
        sections.append(text)
        detail["synthetic"] = cells
        headline["synthetic"] = dict(best_psnr=best.psnr, best_num_steps=best.num_steps,
                                     best_latent_dist_reg_weight=best.latent_dist_reg_weight)
    if (data_dir / "benchmark" / "results.json").is_file():
        text, res = benchmark_section(data_dir / "benchmark")
        sections.append(text)
        detail["benchmark"] = dict(table=res["table"], headline=res["headline"])
        headline["benchmark"] = {n: {k: res["headline"].get(n, {}).get(k) for k in ("lpips", "psnr")
                                     if res["headline"].get(n, {}).get(k) is not None} for n in res["methods"]}
    manifest = data_dir / "aligned" / "manifest.json"
    photos = json.loads(manifest.read_text()) if manifest.is_file() else None
    nav = " · ".join(f'<a href="#{html.escape(k)}">{html.escape(k)}</a>' for k in list(detail) + ["glossary"])
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>recon report</title><style>{STYLE}</style>"
            f"</head><body><h1>recon: restoration report</h1>{header_section(weights, photos)}<p>{nav}</p>"
            f"{''.join(sections)}{glossary_section()}<h2>Parameters</h2><pre>{html.escape(params_text)}</pre>"
            "</body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "index.html", lambda tmp: Path(tmp).write_text(page))
    modes_only = {k: v for k, v in headline.items() if k not in ("synthetic", "benchmark")}
    study = {k: v for k, v in headline.items() if k in ("synthetic", "benchmark")}
    for name, data, keep_order in (("metrics.json", modes_only, True), ("metrics_study.json", study, True),
                                   ("metrics_detail.json", detail, False)):
        text = json.dumps(_finite(data), indent=1, sort_keys=not keep_order)
        write_atomic(out_dir / name, lambda tmp, text=text: Path(tmp).write_text(text))
    return headline


def _finite(obj):
    """JSON has no inf: identical images (PSNR inf) are written as 100 dB."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return 100.0
    return obj
