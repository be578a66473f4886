"""The report stage: one self-contained HTML page, DVC metrics and DVC plots.

``reports/index.html`` embeds every image (base64), so it can be mailed or archived alone.
``reports/metrics.json`` holds the headline numbers per mode and the study's best cell (what
``dvc exp show`` shows as columns); ``reports/metrics_detail.json`` every face and cell. The loss
tables for ``dvc plots`` are written by the project and synthetic stages (``reports/losses/``).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from recon.data.align import paste_back
from recon.restore.composite import paste_known, transfer_luminance
from recon.data.imageio import load_photo, write_atomic
from recon.metrics import GLOSSARY, identity_distance, psnr, ssim


def _b64(img: np.ndarray, fmt: str = "PNG", max_side: Optional[int] = None) -> str:
    im = Image.fromarray(img)
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _img_tag(img: np.ndarray, title: str = "", size: int = 160, fmt: str = "PNG", max_side: int = 256) -> str:
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
    """One line per face: the perceptual distance (the loss without its weighted regularizers,
    which would otherwise dominate and stack every curve on one line); ``phases`` (name -> first
    step) are marked with vertical lines."""
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
    ax.set_ylabel("VGG16 distance", fontsize=7 if small else 10)
    ax.tick_params(labelsize=6 if small else 9)
    ax.set_title(title, fontsize=8 if small else 11)
    if not small and len(curves) <= 16:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _figure_tag(fig, title)


def _read_distance(csv_path: Path) -> List[float]:
    """The ``dist`` column of a ``loss.csv`` (older files without it: ``loss``)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    key = "dist" if rows and "dist" in rows[0] else "loss"
    return [float(r[key]) for r in rows]


def _read_phases(csv_path: Path) -> Dict[str, int]:
    """``{phase: first step}`` of a robust run's ``loss.csv`` (empty for the official method)."""
    with open(csv_path, newline="") as f:
        phases: Dict[str, int] = {}
        for r in csv.DictReader(f):
            if r.get("phase"):
                phases.setdefault(r["phase"], int(r["step"]))
    return phases


def _fmt(v, key: str = "") -> str:
    """A metric value with its unit."""
    if v is None:
        return "–"
    unit = GLOSSARY.get(key, ("", "", "", ""))[1]
    if isinstance(v, float) and math.isinf(v):
        text = "inf"
    else:
        text = f"{v:.3f}" if isinstance(v, float) else str(v)
    if key in ("psnr", "psnr_degraded_input", "consistency_psnr", "psnr_mask", "psnr_composited") and \
            isinstance(v, float) and math.isfinite(v):
        text = f"{v:.2f}"
    return f"{text} {unit}".strip()


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _metric_rows(m: dict) -> str:
    return "<br>".join(f'<span title="{html.escape(GLOSSARY[k][3])}">{html.escape(GLOSSARY[k][0])}: '
                       f"{_fmt(v, k)}</span>" for k, v in m.items() if k in GLOSSARY)


def mode_section(mode: str, degraded_dir: Path, projected_dir: Path, raw_dir: Path, identity: bool = True,
                 lpips=None):
    targets = json.loads((degraded_dir / "targets.json").read_text())
    observed = bool(targets.get("observed"))   # no ground truth: only consistency and identity
    rows, per_face, curves, phases = [], {}, {}, {}
    phase_heads = ""
    restored_by_photo: Dict[str, list] = {}
    op_types = [op["type"] for op in targets["ops"]]
    for face in targets["faces"]:
        name = face["name"]
        out = projected_dir / name
        if not (out / "done.json").is_file():
            continue
        original, _ = load_photo(face["source"])
        degraded, _ = load_photo(degraded_dir / face["degraded"])
        generated, _ = load_photo(out / "image.png")
        gen_degraded, _ = load_photo(out / "degraded.png")
        hole = known = composited = None
        if face.get("mask"):
            hmask = np.asarray(Image.open(degraded_dir / face["mask"]).convert("L")) >= 128
            hole, known = hmask, ~hmask
        if op_types == ["mask"]:
            composited = paste_known(generated, degraded, hole)
        elif op_types == ["grayscale"]:
            composited = transfer_luminance(generated, degraded)
        m = {} if observed else dict(psnr=psnr(generated, original), ssim=ssim(generated, original),
                                     psnr_degraded_input=psnr(degraded, original))
        m["consistency_psnr"] = psnr(gen_degraded, degraded, known)
        if hole is not None and not observed:
            m["psnr_mask"] = psnr(generated, original, hole)
        if composited is not None and not observed:
            m["psnr_composited"] = psnr(composited, original)
        if lpips is not None:
            if not observed:
                m["lpips"] = lpips(generated, original)
            m["lpips_consistency"] = lpips(gen_degraded, degraded)
        if identity:
            m["identity"] = identity_distance(original, generated)
        per_face[name] = m
        curves[name] = _read_distance(out / "loss.csv")
        phases = _read_phases(out / "loss.csv") or phases
        images = ([(degraded, "observed photo")] if observed else
                  [(original, "original"), (degraded, "original degraded")])
        phase_imgs = [(load_photo(out / f"image_{ph}.png")[0], f"after {ph}") for ph in ("W", "W+")
                      if (out / f"image_{ph}.png").is_file()]
        if phase_imgs:
            phase_heads = "".join(f"<th>{html.escape(t)}</th>" for _, t in phase_imgs)
        images += phase_imgs + [(generated, "generated"), (gen_degraded, "generated degraded")]
        if composited is not None:
            images.append((composited, "generated + what the input knows"))
        cells = "".join(f"<td>{_img_tag(im, t)}</td>" for im, t in images)
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}<td class=m>{_metric_rows(m)}</td></tr>")
        restored_by_photo.setdefault(face["photo"], []).append((face["quad"], generated))

    means = {k: _mean([m.get(k) for m in per_face.values()]) for k in GLOSSARY}
    means = {k: v for k, v in means.items() if v is not None}

    pasted = []
    for photo, items in sorted(restored_by_photo.items()):
        path = raw_dir / photo
        if not path.is_file():
            continue
        rgb, _ = load_photo(path)
        restored = rgb
        for quad, face_img in items:
            restored = paste_back(restored, face_img, np.asarray(quad))
        pasted.append(f"<tr><th>{html.escape(photo)}</th><td>{_img_tag(rgb, 'original', 360, 'JPEG', 720)}</td>"
                      f"<td>{_img_tag(restored, 'restored', 360, 'JPEG', 720)}</td></tr>")

    ops = html.escape(json.dumps(targets["ops"]))
    composite_head = ""
    if op_types in (["mask"], ["grayscale"]):
        composite_head = ("<th>Composited (known pixels pasted back)</th>" if op_types == ["mask"]
                          else "<th>Composited (input luminance, generated colour)</th>")
    heads = "<th>Observed photo</th>" if observed else "<th>Original</th><th>Original degraded</th>"
    note = (" The photos were already degraded (observed): no ground truth, so only consistency with the "
            "photo and identity are measured." if observed else "")
    section = [f'<h2 id="{html.escape(mode)}">{html.escape(mode)}</h2>',
               f"<p>operations: <code>{ops}</code>.{note}</p>",
               f"<p class=means>mean over {len(per_face)} faces: {_metric_rows(means).replace('<br>', ' · ')}</p>",
               f"<table><tr><th>face</th>{heads}{phase_heads}<th>Generated</th>"
               f"<th>Generated degraded</th>{composite_head}<th>metrics</th></tr>", *rows, "</table>"]
    if curves:
        section.append(_plot_curves(curves, f"{mode}: " + ("robust method, multiscale LPIPS + L1 per face" if phases
                                                          else "perceptual distance per face"), phases=phases))
    if pasted:
        section += ["<h3>Pasted back into the photos</h3><table><tr><th>photo</th><th>original</th>"
                    "<th>restored</th></tr>", *pasted, "</table>"]
    return "\n".join(section), dict(mean=means, faces=per_face)


def synthetic_section(synthetic_dir: Path):
    """The study as a grid: one row per num_steps, one column per latent_dist_reg_weight; each
    cell holds the generated images of every seed with their PSNR and a small loss plot; the
    sampled truth beside the grid; the best cell (highest mean PSNR) marked."""
    runs = json.loads((synthetic_dir / "runs.json").read_text())
    seeds = [f"seed{s:04d}" for s in runs["seeds"]]
    truth = {s: load_photo(synthetic_dir / "truth" / f"{s}.png")[0] for s in seeds}
    cells = {}
    for tag, run in runs["runs"].items():
        images, ps, curves = [], [], {}
        for s in seeds:
            img, _ = load_photo(synthetic_dir / tag / s / "image.png")
            p = psnr(img, truth[s])
            ps.append(p)
            images.append(f"<figure>{_img_tag(img, f'{tag} {s}', 96)}<figcaption>{_fmt(p, 'psnr')}</figcaption></figure>")
            curves[s] = _read_distance(synthetic_dir / tag / s / "loss.csv")
        cells[(run["num_steps"], run["latent_dist_reg_weight"])] = dict(
            tag=tag, psnr=_mean(ps), images="".join(images),
            plot=_plot_curves(curves, f"steps {run['num_steps']}, reg {run['latent_dist_reg_weight']:g}", small=True))
    steps = sorted({k[0] for k in cells})
    regs = sorted({k[1] for k in cells})
    best = max(cells, key=lambda k: -math.inf if cells[k]["psnr"] is None else cells[k]["psnr"])
    truth_cells = "".join(f"<figure>{_img_tag(truth[s], s, 96)}<figcaption>{s}</figcaption></figure>" for s in seeds)
    head = "".join(f"<th>latent_dist_reg_weight {r:g}</th>" for r in regs)
    rows = []
    for n in steps:
        tds = []
        for r in regs:
            c = cells.get((n, r))
            if c is None:
                tds.append("<td></td>")
                continue
            mark = " class=best" if (n, r) == best else ""
            star = " ★ best" if (n, r) == best else ""
            tds.append(f"<td{mark}><div class=imgs>{c['images']}</div><b>mean {_fmt(c['psnr'], 'psnr')}{star}</b>"
                       f"<br>{c['plot']}</td>")
        rows.append(f"<tr><th>num_steps {n}</th>{''.join(tds)}</tr>")
    body = ['<h2 id="synthetic">Synthetic study: num_steps × latent_dist_reg_weight</h2>',
            f"<p>Faces sampled from the generator (truncation psi {runs['truncation_psi']}), then inverted; PSNR "
            "against the sampled truth. The best cell (highest mean PSNR) is marked.</p>",
            f"<div class=study><div class=truth><b>truth</b>{truth_cells}</div>",
            f"<table><tr><th></th>{head}</tr>", *rows, "</table></div>"]
    metrics = {c["tag"]: dict(psnr=c["psnr"], num_steps=k[0], latent_dist_reg_weight=k[1]) for k, c in cells.items()}
    return "\n".join(body), metrics, best


def benchmark_section(bench_dir: Path):
    """The methods compared: one row per task and level, per method its mean PSNR, SSIM, LPIPS,
    identity and seconds per restoration (the best LPIPS of a row marked), a plot of LPIPS per
    row, and the first seed's images. Returns ``(html, headline per method)``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads((bench_dir / "results.json").read_text())
    methods = list(res["methods"])
    table, headline = res["table"], res["headline"]
    cols = ("psnr", "ssim", "lpips", "identity")
    present = [c for c in cols if any(c in v for t in table.values() for v in t.values())]
    head = "".join(f"<th colspan={len(present) + (name != 'input')}>{html.escape(name)}</th>"
                   for name in ["input"] + methods)
    sub = "".join("".join(f"<th>{GLOSSARY[c][0]}</th>" for c in present) + ("<th>s</th>" if name != "input" else "")
                  for name in ["input"] + methods)
    rows = []
    seed0 = f"seed{res['seeds'][0]:04d}"
    strips = []
    for cell, by in table.items():
        best = min((by[n]["lpips"], n) for n in methods if by.get(n, {}).get("lpips") is not None)[1] \
            if any(by.get(n, {}).get("lpips") is not None for n in methods) else None
        tds = []
        for name in ["input"] + methods:
            v = by.get(name, {})
            mark = " class=best" if name == best else ""
            tds += [f"<td{mark}>{_fmt(v.get(c), c)}</td>" for c in present]
            if name != "input":
                tds.append(f"<td>{_fmt(v.get('seconds'))}</td>")
        rows.append(f"<tr><th>{html.escape(cell)}</th>{''.join(tds)}</tr>")
        imgs = [(bench_dir / "truth" / f"{seed0}.png", "truth"), (bench_dir / cell / "target" / f"{seed0}.png", "input")]
        imgs += [(bench_dir / cell / n / f"{seed0}.png", n) for n in methods]
        figs = "".join(f"<figure>{_img_tag(load_photo(p)[0], t, 96)}<figcaption>{html.escape(t)}</figcaption></figure>"
                       for p, t in imgs if p.is_file())
        strips.append(f"<tr><th>{html.escape(cell)}</th><td class=imgs>{figs}</td></tr>")
    means = "".join(f"<tr><th>{html.escape(n)}</th>" + "".join(f"<td>{_fmt(headline.get(n, {}).get(c), c)}</td>"
                                                              for c in present)
                    + f"<td>{headline.get(n, {}).get('lpips_wins', '–')}</td></tr>" for n in ["input"] + methods)

    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(table) * (len(methods) + 1)), 3.2))
    width = 0.8 / (len(methods) + 1)
    for k, name in enumerate(["input"] + methods):
        ys = [table[c].get(name, {}).get("lpips") for c in table]
        ax.bar([i + k * width for i in range(len(table))], [y if y is not None else 0 for y in ys], width, label=name)
    ax.set_xticks([i + width * len(methods) / 2 for i in range(len(table))], list(table), rotation=30, ha="right")
    ax.set_ylabel("LPIPS to the truth (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = _figure_tag(fig, "LPIPS per task and method")
    plt.close(fig)
    body = ['<h2 id="benchmark">Benchmark: which method restores better, at what cost</h2>',
            f"<p>{len(res['seeds'])} faces sampled from the generator (truncation psi {res['truncation_psi']}, "
            f"{res['resolution']} px), degraded per task and level, restored by each method with the same budget of "
            f"{res['budget']} generator forward+backward passes per face; scores against the sampled truth, mean "
            "over faces (<i>input</i>: the degraded input itself). The best LPIPS of each row is marked; "
            "<i>s</i>: seconds per restoration on the machine that ran it.</p>",
            f"<table><tr><th>mean over rows</th>{''.join(f'<th>{GLOSSARY[c][0]}</th>' for c in present)}"
            f"<th>rows won (LPIPS)</th></tr>{means}</table>",
            f"<table><tr><th rowspan=2>task</th>{head}</tr><tr>{sub}</tr>", *rows, "</table>", plot,
            f"<h3>{seed0}</h3><table>", *strips, "</table>"]
    headline = {n: {k: v for k, v in headline.get(n, {}).items() if k in cols} for n in methods}
    return "\n".join(body), headline


def glossary_section() -> str:
    rows = "".join(f"<tr><th>{html.escape(label)}</th><td>{unit or '–'}</td><td>{better}</td>"
                   f"<td>{html.escape(meaning)}</td></tr>" for label, unit, better, meaning in GLOSSARY.values())
    return ('<h2 id="glossary">What the numbers mean</h2><table class=glossary><tr><th>metric</th><th>unit</th>'
            f"<th>better</th><th>meaning</th></tr>{rows}</table>")


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}
td.m{font-size:12px;white-space:nowrap}pre{background:#f6f6f6;padding:1em}
figure{display:inline-block;margin:2px;text-align:center}figcaption{font-size:11px}
td.best{outline:3px solid #1a7f37;background:#eefbf0}.study{display:flex;gap:1em;align-items:flex-start}
.truth{display:flex;flex-direction:column;margin-top:1em}.imgs{white-space:nowrap}
table.glossary td{font-size:13px}p.means{font-size:14px}"""

HEADLINE = ("psnr", "ssim", "lpips", "consistency_psnr", "identity", "psnr_composited")


def build_report(modes: List[str], data_dir, raw_dir, out_dir, params_text: str = "", report=None,
                 vgg=None) -> dict:
    """Write ``index.html`` (self-contained), ``metrics.json`` (the headline numbers: what
    ``dvc exp show`` shows, about 20 columns) and ``metrics_detail.json`` (every face and cell).
    ``vgg``: NVIDIA's ``vgg16.pt``, for LPIPS (left out without it). Returns the headline metrics."""
    from recon.config import Report
    from recon.metrics import LPIPSMetric

    report = report if report is not None else Report()
    lpips = LPIPSMetric(vgg) if vgg is not None else None
    data_dir, raw_dir, out_dir = Path(data_dir), Path(raw_dir), Path(out_dir)
    sections, detail, headline = [], {}, {}
    for mode in modes:
        d, p = data_dir / "degraded" / mode, data_dir / "projected" / mode
        if not (d / "targets.json").is_file():
            continue
        text, m = mode_section(mode, d, p, raw_dir, report.identity, lpips)
        sections.append(text)
        detail[mode] = m
        headline[mode] = {k: v for k, v in m["mean"].items() if k in HEADLINE or k == "lpips_consistency"
                          and "lpips" not in m["mean"]}
    syn = data_dir / "synthetic" / "runs.json"
    if syn.is_file():
        text, cells, best = synthetic_section(syn.parent)
        sections.append(text)
        detail["synthetic"] = cells
        psnrs = [c["psnr"] for c in cells.values() if c["psnr"] is not None]
        best_cell = next(c for c in cells.values() if (c["num_steps"], c["latent_dist_reg_weight"]) == best)
        headline["synthetic"] = dict(best_psnr=best_cell["psnr"], best_num_steps=best[0],
                                     best_latent_dist_reg_weight=best[1], mean_psnr=_mean(psnrs))
    bench = data_dir / "benchmark" / "results.json"
    if bench.is_file():
        text, heads = benchmark_section(bench.parent)
        sections.append(text)
        detail["benchmark"] = json.loads(bench.read_text())["table"]
        headline["benchmark"] = heads
    nav = " · ".join(f'<a href="#{html.escape(k)}">{html.escape(k)}</a>' for k in list(detail) + ["glossary"])
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>recon report</title><style>{STYLE}</style>"
            f"</head><body><h1>recon: restoration report</h1><p>{nav}</p>{''.join(sections)}{glossary_section()}"
            f"<h2>Parameters</h2><pre>{html.escape(params_text)}</pre></body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "index.html", lambda tmp: Path(tmp).write_text(page))
    for name, data in (("metrics.json", headline), ("metrics_detail.json", detail)):
        text = json.dumps(_finite(data), indent=1, sort_keys=True)
        write_atomic(out_dir / name, lambda tmp: Path(tmp).write_text(text))
    return headline


def _finite(obj):
    """JSON has no inf: identical images (PSNR inf) are written as 100 dB."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isinf(obj):
        return 100.0
    return obj
