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
        fields = {k: v for k, v in op.model_dump(exclude_none=True).items() if k != "type"}
        parts.append(op.type + (f" ({', '.join(f'{k} {v}' for k, v in fields.items())})" if fields else ""))
    return ", ".join(parts) or "none (plain reconstruction)"


ROLE_HEADS = {"original": "Original", "degraded": "Original degraded", "generated": "Generated",
              "generated degraded": "Generated degraded", "samples mean": "Mean of the samples",
              "uncertainty": f"Uncertainty (samples' std; white = {UNCERTAINTY_FULL_SCALE:g})"}


TABLE_PX = 1300           # what the images of a row may take (a 1400 px window, less the face and metrics columns)
THUMB_PX = 320            # a pasted-back photo's thumbnail; it opens the full image in results/


def ordered_roles(images: Dict[str, np.ndarray], phases: Dict[str, int]) -> List[str]:
    """The image columns in the order of the run: the earlier phases as they ran (W, W+, W++), not
    as their file names sort ("W+" sorts before "W")."""
    order = {f"after {p}": k for k, p in enumerate(phases)}
    roles = list(images)
    first = next((i for i, r in enumerate(roles) if r.startswith("after ")), None)
    if first is None:
        return roles
    after = sorted((r for r in roles if r.startswith("after ")), key=lambda r: (order.get(r, len(order)), r))
    rest = [r for r in roles if not r.startswith("after ")]
    return rest[:first] + after + rest[first:]


def mode_section(s: ModeScores, results: Optional[Path], out_dir: Path) -> str:
    """One mode: each face's images in the order of the run at one size that fits the page, its
    metrics; the loss curves; the restored photos (thumbnails that open results/<mode>/)."""
    rows: List[str] = []
    heads: List[str] = []
    for face in s.faces:
        images = s.images(face)
        if not heads:
            heads = ordered_roles(images, face.phases)
        size = max(64, min(IMAGE_PX, (TABLE_PX - 280) // max(len(heads), 1) - 10))
        cells = "".join(f"<td>{_img_tag(images[r], r, size)}</td>" if r in images else "<td></td>" for r in heads)
        rows.append(f"<tr><th>{html.escape(face.target.name)}</th>{cells}<td class=m>{_metric_rows(face.metrics)}"
                    "</td></tr>")

    def head(role):
        if role == "degraded" and s.observed:
            return "Observed photo"
        if role == "composited" and s.composite is not None:
            return f"Composited ({s.composite[0]})"
        return ROLE_HEADS.get(role, role)
    n = len(s.faces)
    section = [f'<h2 id="{html.escape(s.mode)}">{html.escape(s.mode)}</h2>',
               f"<p>operations: {html.escape(describe_ops(s.ops))}."
               + (f" For the photos {html.escape(', '.join(s.photos))}." if s.photos else "")
               + (" The photos were already degraded (observed): no ground truth, so only consistency with the "
                  "photo and identity are measured." if s.observed else "") + "</p>"]
    if n:
        section.append(f"<p class=means>mean over {n} face{'s' * (n != 1)}: "
                       f"{_metric_rows(s.means).replace('<br>', ' · ')}</p>")
    else:
        section.append("<p class=means>No face of this mode has a result.</p>")
    if s.skipped:
        section.append("<p class=skipped>Skipped (not a usable target of this mode): " + "; ".join(
            f"{html.escape(k['name'])}: {html.escape(k['reason'])}" for k in s.skipped) + "</p>")
    if rows:
        section += [f"<table><tr><th>face</th>{''.join(f'<th>{html.escape(head(r))}</th>' for r in heads)}"
                    "<th>metrics</th></tr>", *rows, "</table>"]
    curves = {f.target.name: f.curve for f in s.faces}
    phases = next((f.phases for f in s.faces if f.phases), {})
    if curves:
        section.append(_plot_curves(curves, f"{s.mode}: distance per face (the loss without regularizers)",
                                    phases=phases))
    pasted = _pasted_photos(s, results, out_dir)
    if pasted:
        what = f"the composited result ({s.composite[0]})" if s.composite else "the generated face"
        section += [f"<h3>Restored photos</h3><p>Pasted back: {what}; click a photo for the full image "
                    f"(<code>results/{html.escape(s.mode)}/</code>).</p><div class=imgs>", *pasted, "</div>"]
    return "\n".join(section)


def _pasted_photos(s: ModeScores, results: Optional[Path], out_dir: Path) -> List[str]:
    """Thumbnails of the mode's restored photos, each a link to its file in the results folder."""
    import os

    if results is None or not (results / s.mode).is_dir():
        return []
    out = []
    for path in sorted((results / s.mode).glob("*.png")):
        rgb, _ = load_photo(path)
        href = os.path.relpath(path, out_dir).replace(os.sep, "/")
        out.append(f'<figure><a href="{html.escape(href)}">{_img_tag(rgb, path.name, THUMB_PX, "JPEG", THUMB_PX)}'
                   f"</a><figcaption>{html.escape(path.name)}</figcaption></figure>")
    return out


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
    """The methods compared: per score a table of the tasks and levels (rows) by method (columns,
    the degraded input first; the best LPIPS of a row marked), so that each fits the page; the
    seconds per restoration; a plot of LPIPS per row; the blind tasks beside the known ones; the
    first seed's images. Returns ``(html, results.json)``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads((bench_dir / "results.json").read_text())
    methods = list(res.get("rows", res["methods"]))    # a samples method has a second row, its mean
    table, headline = res["table"], res["headline"]
    cols = ("psnr", "ssim", "lpips", "identity")
    present = [c for c in cols if any(c in v for t in table.values() for v in t.values())]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in ["input"] + methods)
    per_score = []
    for c in present + ["seconds"]:
        names = methods if c == "seconds" else ["input"] + methods
        rows = []
        for cell, by in table.items():
            best = best_lpips(by, methods) if c == "lpips" else None
            tds = "".join(f"<td{' class=best' if n == best else ''}>{_fmt(by.get(n, {}).get(c), c)}</td>"
                          for n in names)
            rows.append(f"<tr><th>{html.escape(cell)}</th>{tds}</tr>")
        label = GLOSSARY[c][0] + (f" ({GLOSSARY[c][2]} is better)" if GLOSSARY[c][2] in ("higher", "lower") else "")
        heads = head if c != "seconds" else "".join(f"<th>{html.escape(n)}</th>" for n in methods)
        per_score.append(f"<h3>{html.escape(label)}</h3><table><tr><th>task</th>{heads}</tr>{''.join(rows)}</table>")
    strips = []
    seed0 = f"seed{res['seeds'][0]:04d}"
    for cell in table:
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
    n = len(res["seeds"])
    body = ['<h2 id="benchmark">Benchmark: which method restores better, at what cost</h2>',
            f"<p>{n} face{'s' * (n != 1)} sampled from the generator (truncation psi {res['truncation_psi']}, "
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
            f"<th>{GLOSSARY['lpips_wins'][0]}</th></tr>{means}</table>",
            *per_score, plot, blind_table(res.get("blind", []), present), f"<h3>{seed0}</h3><table>", *strips,
            "</table>"]
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


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(params_file: str = "params.yaml", inputs=("data/raw",)) -> str:
    """``from git revision abc1234`` and, when the params file or the photos differ from that
    revision, which (a run of a dirty workspace is not that revision's)."""
    rev = _git("rev-parse", "--short", "HEAD")
    if not rev:
        return ""
    dirty = [line[3:].strip('"') for line in _git("status", "--porcelain", "--", params_file, *inputs).splitlines()
             if line]
    changed = [x for x in (params_file, *inputs) if any(d == x or d.startswith(x.rstrip("/") + "/") for d in dirty)]
    return f"from git revision {rev}" + (f", with uncommitted changes in {', '.join(changed)}" if changed else "")


def header_section(weights: Optional[dict], photos: Optional[dict], params_file: str = "params.yaml",
                   profile: str = "") -> str:
    """When, from which revision (and whether the params or photos had uncommitted changes), with
    which weights and profile; the photos that gave no face."""
    where = provenance(params_file)
    lines = [f"made {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
             + (f" {html.escape(where)}" if where else "")]
    if profile:
        lines.append(f"profile: {html.escape(profile)}")
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


def summary_section(all_scores: List[ModeScores]) -> str:
    """At the top: per mode its faces, restored against the input (PSNR, LPIPS), consistency with
    the observation; a mode whose results are worse than its degraded input is marked."""
    rows = []
    for sc in all_scores:
        m = sc.means
        worse = [label for key, base, label, higher in (("psnr", "psnr_degraded_input", "PSNR", True),
                                                       ("lpips", "lpips_degraded_input", "LPIPS", False))
                 if key in m and base in m and (m[key] < m[base] if higher else m[key] > m[base])]
        note = ("observed photos: no ground truth" if sc.observed else
                f"worse than the input ({', '.join(worse)})" if worse else "")
        cls = " class=worse" if worse else ""
        rows.append(f"<tr{cls}><th><a href=\"#{html.escape(sc.mode)}\">{html.escape(sc.mode)}</a></th>"
                    f"<td>{len(sc.faces)}</td><td>{_fmt(m.get('psnr'), 'psnr')}</td>"
                    f"<td>{_fmt(m.get('psnr_degraded_input'), 'psnr')}</td><td>{_fmt(m.get('lpips'), 'lpips')}</td>"
                    f"<td>{_fmt(m.get('lpips_degraded_input'), 'lpips')}</td>"
                    f"<td>{_fmt(m.get('consistency_psnr'), 'consistency_psnr')}</td>"
                    f"<td>{_fmt(m.get('lpips_consistency'), 'lpips_consistency')}</td>"
                    f"<td>{'⚠ ' if worse else ''}{html.escape(note)}</td></tr>")
    if not rows:
        return ""
    return ('<h2 id="summary">Summary</h2><p>Means over each mode\'s faces: the restored face against the original '
            "and, beside it, the degraded input against the original (what a restoration should beat); consistency "
            "is the restored face degraded again against the observation.</p><table><tr><th>mode</th><th>faces</th>"
            "<th>PSNR restored</th><th>PSNR input</th><th>LPIPS restored</th><th>LPIPS input</th>"
            "<th>consistency PSNR</th><th>consistency LPIPS</th><th></th></tr>" + "".join(rows) + "</table>")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1320px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}
td.m{font-size:12px;min-width:190px}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}
img{max-width:100%;height:auto}figure{display:inline-block;margin:2px;text-align:center}figcaption{font-size:11px}
td.best{outline:3px solid #1a7f37;background:#eefbf0}.study{display:flex;gap:1em;align-items:flex-start}
.truth{display:flex;flex-direction:column;margin-top:1em}td.imgs{white-space:nowrap}div.imgs{display:flex;
flex-wrap:wrap;gap:4px}tr.worse td,tr.worse th{background:#fff1f0}
table.glossary td{font-size:13px}p.means{font-size:14px}p.header,p.skipped{font-size:13px;color:#444}"""


def headline_of(sc: ModeScores) -> Dict[str, float]:
    """A mode's one headline number (``dvc exp show`` stays narrow): PSNR to the original, or for
    observed photos the consistency LPIPS."""
    m = sc.means
    if "psnr" in m:
        return {"psnr": m["psnr"]}
    return {"consistency": m["lpips_consistency"]} if "lpips_consistency" in m else {}


def build_report(modes: List[str], data_dir, out_dir, params_text: str = "", report=None,
                 vgg=None, weights: Optional[dict] = None, results_dir=None, params_file: str = "params.yaml",
                 profile: str = "") -> dict:
    """Write ``index.html`` (self-contained: every image embedded; the restored photos as
    thumbnails that link to ``results_dir``), the DVC metrics ``metrics.json`` (per mode one
    headline: PSNR, or consistency LPIPS for observed photos) and ``metrics_study.json`` (the
    study's best PSNR, the benchmark's best LPIPS and its method), and ``metrics_detail.json``
    (every face and cell). ``params_text``: the params as they ran (the profile applied);
    ``vgg``: NVIDIA's ``vgg16.pt``, for LPIPS (left out without it); ``weights``: the
    download_weights record, named in the header. Returns the headline metrics."""
    from recon.config import Report
    from recon.metrics import LPIPSMetric

    report = report if report is not None else Report()
    lpips = LPIPSMetric(vgg) if vgg is not None else None
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    results = Path(results_dir) if results_dir is not None else None
    sections: List[str] = []
    detail: Dict[str, Any] = {}
    headline: Dict[str, Any] = {}
    study: Dict[str, Any] = {}
    all_scores = []
    for mode in modes:
        d, p = data_dir / "degraded" / mode, data_dir / "projected" / mode
        if not (d / "targets.json").is_file():
            continue
        scores = score_mode(mode, d, p, report.identity, lpips)
        all_scores.append(scores)
        sections.append(mode_section(scores, results, out_dir))
        detail[mode] = dict(mean=scores.means, faces={f.target.name: f.metrics for f in scores.faces},
                            skipped=scores.skipped)
        headline[mode] = headline_of(scores)
    if (data_dir / "synthetic" / "runs.json").is_file():
        text, cells, best = synthetic_section(data_dir / "synthetic")
        sections.append(text)
        detail["synthetic"] = dict(cells=cells, best=dict(psnr=best.psnr, num_steps=best.num_steps,
                                                          latent_dist_reg_weight=best.latent_dist_reg_weight))
        study["study"] = dict(psnr=best.psnr)
    if (data_dir / "benchmark" / "results.json").is_file():
        text, res = benchmark_section(data_dir / "benchmark")
        sections.append(text)
        detail["benchmark"] = dict(table=res["table"], headline=res["headline"], blind=res.get("blind", []))
        scored = [(h["lpips"], n) for n, h in res["headline"].items() if n != "input" and h.get("lpips") is not None]
        if scored:
            best_lpips_value, best_method = min(scored)
            study["bench"] = dict(lpips=best_lpips_value, best=best_method)
    manifest = data_dir / "aligned" / "manifest.json"
    photos = json.loads(manifest.read_text()) if manifest.is_file() else None
    nav = " · ".join(f'<a href="#{html.escape(k)}">{html.escape(k)}</a>'
                     for k in ["summary"] * bool(all_scores) + list(detail) + ["glossary"])
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>recon report</title><style>{STYLE}</style>"
            f"</head><body><h1>recon: restoration report</h1>{header_section(weights, photos, params_file, profile)}"
            f"<p>{nav}</p>{summary_section(all_scores)}{''.join(sections)}{glossary_section()}"
            f"<h2>Parameters</h2><p>As they ran{' (profile ' + html.escape(profile) + ' applied)' if profile else ''}"
            f":</p><pre>{html.escape(params_text)}</pre></body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "index.html", lambda tmp: Path(tmp).write_text(page))
    for name, data, keep_order in (("metrics.json", headline, True), ("metrics_study.json", study, True),
                                   ("metrics_detail.json", detail, False)):
        text = json.dumps(_finite(data), indent=1, sort_keys=not keep_order)
        write_atomic(out_dir / name, lambda tmp, text=text: Path(tmp).write_text(text))
    return dict(headline, **study)


def _finite(obj):
    """JSON has no inf: identical images (PSNR inf) are written as 100 dB."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and math.isinf(obj):
        return 100.0
    return obj
