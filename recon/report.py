"""The report stage: one self-contained HTML page, DVC metrics and DVC plots.

``reports/index.html`` embeds every image (base64), so it can be mailed or archived alone.
``reports/metrics.json`` holds per-mode means (what ``dvc exp show`` shows as columns) and
per-face values; ``reports/plots/<mode>/<face>.csv`` are the loss curves for ``dvc plots show``.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from .align import paste_back
from .composite import paste_known, transfer_luminance
from .imageio import load_photo, write_atomic
from .metrics import identity_distance, psnr, ssim


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


def _plot_losses(curves: Dict[str, List[float]], title: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for name, ys in curves.items():
        ax.plot(range(len(ys)), ys, label=name, linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" alt="{html.escape(title)}">'


def _read_losses(csv_path: Path) -> List[float]:
    lines = csv_path.read_text().splitlines()
    head = lines[0].split(",")
    i = head.index("loss")
    return [float(line.split(",")[i]) for line in lines[1:] if line]


def _write_plot(path: Path, losses: List[float]) -> None:
    """One DVC plot file: ``step,loss`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("step,loss\n" + "".join(f"{i},{v}\n" for i, v in enumerate(losses)))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def mode_section(mode: str, degraded_dir: Path, projected_dir: Path, raw_dir: Path, plots_dir: Path,
                 identity: bool = True):
    targets = json.loads((degraded_dir / "targets.json").read_text())
    rows, per_face, curves = [], {}, {}
    restored_by_photo: Dict[str, list] = {}
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
        op_types = [op["type"] for op in targets["ops"]]
        if op_types == ["mask"]:
            composited = paste_known(generated, degraded, hole)
        elif op_types == ["grayscale"]:
            composited = transfer_luminance(generated, degraded)
        m = dict(psnr=psnr(generated, original), ssim=ssim(generated, original),
                 psnr_degraded_input=psnr(degraded, original),
                 consistency_psnr=psnr(gen_degraded, degraded, known))
        if hole is not None:
            m["psnr_mask"] = psnr(generated, original, hole)
        if composited is not None:
            m["psnr_composited"] = psnr(composited, original)
        if identity:
            m["identity"] = identity_distance(original, generated)
        per_face[name] = m
        curves[name] = _read_losses(out / "loss.csv")
        _write_plot(plots_dir / mode / f"{name}.csv", curves[name])
        images = [(original, "original"), (degraded, "original degraded"), (generated, "generated"),
                  (gen_degraded, "generated degraded")]
        if composited is not None:
            images.append((composited, "generated + what the input knows"))
        cells = "".join(f"<td>{_img_tag(im, t)}</td>" for im, t in images)
        metrics_cell = "<br>".join(f"{k}: {_fmt(v)}" for k, v in m.items())
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}<td class=m>{metrics_cell}</td></tr>")
        restored_by_photo.setdefault(face["photo"], []).append((face["quad"], generated))

    means = {k: _mean([m.get(k) for m in per_face.values()]) for k in
             ("psnr", "ssim", "psnr_degraded_input", "consistency_psnr", "psnr_mask", "psnr_composited",
              "identity")}
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
    if [op["type"] for op in targets["ops"]] in (["mask"], ["grayscale"]):
        composite_head = ("<th>Composited (known pixels pasted back)</th>" if targets["ops"][0]["type"] == "mask"
                          else "<th>Composited (input luminance, generated colour)</th>")
    mean_txt = ", ".join(f"{k} {_fmt(v)}" for k, v in means.items())
    section = [f'<h2 id="{html.escape(mode)}">{html.escape(mode)}</h2>',
               f"<p>operations: <code>{ops}</code><br>means: {mean_txt}</p>",
               "<table><tr><th>face</th><th>Original</th><th>Original degraded</th><th>Generated</th>"
               f"<th>Generated degraded</th>{composite_head}<th>metrics</th></tr>", *rows, "</table>"]
    if curves:
        section.append(_plot_losses(curves, f"{mode}: loss per step"))
    if pasted:
        section += ["<h3>Pasted back into the photos</h3><table><tr><th>photo</th><th>original</th>"
                    "<th>restored</th></tr>", *pasted, "</table>"]
    return "\n".join(section), dict(mean=means, faces=per_face)


def synthetic_section(synthetic_dir: Path, plots_dir: Path):
    runs = json.loads((synthetic_dir / "runs.json").read_text())
    seeds = [f"seed{s:04d}" for s in runs["seeds"]]
    truth = {s: load_photo(synthetic_dir / "truth" / f"{s}.png")[0] for s in seeds}
    head = "".join(f"<th>{s}</th>" for s in seeds)
    rows = ["<tr><th>sampled image</th>" + "".join(f"<td>{_img_tag(truth[s], s, 128)}</td>" for s in seeds)
            + "<td></td></tr>"]
    metrics, curves = {}, {}
    for tag, run in runs["runs"].items():
        cells, ps = [], []
        for s in seeds:
            img, _ = load_photo(synthetic_dir / tag / s / "image.png")
            p = psnr(img, truth[s])
            ps.append(p)
            cells.append(f"<td>{_img_tag(img, f'{tag} {s}', 128)}<br>PSNR {_fmt(p)}</td>")
            curves[f"{tag} {s}"] = _read_losses(synthetic_dir / tag / s / "loss.csv")
            _write_plot(plots_dir / "synthetic" / f"{tag}_{s}.csv", curves[f"{tag} {s}"])
        metrics[tag] = dict(psnr=_mean(ps), num_steps=run["num_steps"],
                            latent_dist_reg_weight=run["latent_dist_reg_weight"])
        rows.append(f"<tr><th>steps {run['num_steps']}, reg {run['latent_dist_reg_weight']:g}</th>{''.join(cells)}"
                    f"<td>mean PSNR {_fmt(metrics[tag]['psnr'])}</td></tr>")
    body = ['<h2 id="synthetic">Synthetic sweep: num_steps x latent_dist_reg_weight</h2>',
            f"<p>truncation psi {runs['truncation_psi']}</p>",
            f"<table><tr><th>run</th>{head}<th></th></tr>", *rows, "</table>",
            _plot_losses(curves, "synthetic: loss per step")]
    return "\n".join(body), metrics


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}
td.m{font-size:12px;white-space:nowrap}img{image-rendering:auto}pre{background:#f6f6f6;padding:1em}"""


def build_report(modes: List[str], data_dir, raw_dir, out_dir, params_text: str = "",
                 identity: bool = True) -> dict:
    data_dir, raw_dir, out_dir = Path(data_dir), Path(raw_dir), Path(out_dir)
    plots_dir = out_dir / "plots"
    sections, metrics = [], {}
    for mode in modes:
        d, p = data_dir / "degraded" / mode, data_dir / "projected" / mode
        if not (d / "targets.json").is_file():
            continue
        text, m = mode_section(mode, d, p, raw_dir, plots_dir, identity)
        sections.append(text)
        metrics[mode] = m
    syn = data_dir / "synthetic" / "runs.json"
    if syn.is_file():
        text, m = synthetic_section(syn.parent, plots_dir)
        sections.append(text)
        metrics["synthetic"] = m
    nav = " · ".join(f'<a href="#{html.escape(k)}">{html.escape(k)}</a>' for k in metrics)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>recon report</title><style>{STYLE}</style>"
            f"</head><body><h1>recon: restoration report</h1><p>{nav}</p>{''.join(sections)}"
            f"<h2>Parameters</h2><pre>{html.escape(params_text)}</pre></body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "index.html", lambda tmp: Path(tmp).write_text(page))
    summary = {mode: m["mean"] for mode, m in metrics.items() if mode != "synthetic"}
    if "synthetic" in metrics:
        summary["synthetic"] = {tag: {"psnr": v["psnr"]} for tag, v in metrics["synthetic"].items()}
    full = dict(summary=summary, detail=metrics)
    text = json.dumps(_finite(summary), indent=1, sort_keys=True)
    write_atomic(out_dir / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    detail = json.dumps(_finite(metrics), indent=1, sort_keys=True)
    write_atomic(out_dir / "metrics_detail.json", lambda tmp: Path(tmp).write_text(detail))
    return full


def _finite(obj):
    """JSON has no inf: identical images (PSNR inf) are written as 100 dB."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isinf(obj):
        return 100.0
    return obj
