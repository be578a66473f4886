"""The record of one check and the report of a whole ``recon verify`` run (Markdown and HTML)."""
from __future__ import annotations

import html
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List

PASS, FAIL, SKIPPED, INFO = "pass", "FAIL", "skipped", "measured"


@dataclass
class Check:
    """One check: what README claim it stands for (``claim``), the measured ``figure`` (the worst
    deviation, in words with its unit), the ``tolerance`` it is held to, the ``verdict`` (pass,
    FAIL, skipped with why, or measured for a figure with no pass mark) and its seconds."""
    name: str
    claim: str
    figure: str = ""
    tolerance: str = ""
    verdict: str = PASS
    detail: str = ""
    seconds: float = 0.0
    rows: List[List[str]] = field(default_factory=list)     # a small table of its own (the bench, the gate)

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL


def environment(device: str) -> Dict[str, str]:
    """Versions and devices, for the report's header."""
    import numpy
    import PIL
    import torch

    import recon

    env = {"recon": getattr(recon, "__version__", "?"), "python": platform.python_version(),
           "torch": torch.__version__, "CUDA": torch.version.cuda or "none", "numpy": numpy.__version__,
           "Pillow": PIL.__version__, "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
           "device": device, "threads": str(torch.get_num_threads())}
    try:
        import dlib
        env["dlib"] = dlib.__version__
    except ImportError:
        env["dlib"] = "not installed"
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device(device))
        env["GPU"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}"
    else:
        from recon.restore.precision import cpu_has_bf16
        env["CPU bfloat16"] = "native (AVX512-BF16 or AMX)" if cpu_has_bf16() else "emulated (no AVX512-BF16/AMX)"
    return env


def markdown(checks: List[Check], env: Dict[str, str], title: str) -> str:
    failed = [c.name for c in checks if c.failed]
    lines = [f"# {title}", "",
             f"**{'FAILED: ' + ', '.join(failed) if failed else 'every check passed'}** "
             f"({sum(c.verdict == PASS for c in checks)} passed, {len(failed)} failed, "
             f"{sum(c.verdict == SKIPPED for c in checks)} skipped, {sum(c.verdict == INFO for c in checks)} "
             "measured)", "",
             " | ".join(f"{k} {v}" for k, v in env.items()), "",
             "| check | claim | figure | tolerance | verdict | s |", "|---|---|---|---|---|---|"]
    for c in checks:
        verdict = c.verdict + (f": {c.detail}" if c.detail and c.verdict in (FAIL, SKIPPED) else "")
        lines.append(f"| {c.name} | {c.claim} | {c.figure} | {c.tolerance} | {verdict} | {c.seconds:.1f} |")
    for c in checks:
        if c.rows:
            lines += ["", f"## {c.name}", ""]
            lines += ["| " + " | ".join(r) + " |" for r in c.rows[:1]]
            lines.append("|" + "---|" * len(c.rows[0]))
            lines += ["| " + " | ".join(r) + " |" for r in c.rows[1:]]
        if c.detail and c.verdict not in (FAIL, SKIPPED):
            lines += ["", f"{c.name}: {c.detail}"]
    return "\n".join(lines) + "\n"


COLOURS = {PASS: "#1a7f37", FAIL: "#cf222e", SKIPPED: "#6e7781", INFO: "#0969da"}


def html_page(checks: List[Check], env: Dict[str, str], title: str) -> str:
    esc = html.escape
    failed = [c.name for c in checks if c.failed]
    head = (f"<p class=summary style='color:{COLOURS[FAIL] if failed else COLOURS[PASS]}'>"
            f"{esc('FAILED: ' + ', '.join(failed)) if failed else 'Every check passed.'}</p>")
    envs = "".join(f"<li><b>{esc(k)}</b> {esc(v)}</li>" for k, v in env.items())
    body = []
    for c in checks:
        verdict = esc(c.verdict) + (f"<br><small>{esc(c.detail)}</small>" if c.detail else "")
        body.append(f"<tr><td>{esc(c.name)}</td><td>{esc(c.claim)}</td><td>{esc(c.figure)}</td>"
                    f"<td>{esc(c.tolerance)}</td><td style='color:{COLOURS.get(c.verdict, '#000')}'>{verdict}</td>"
                    f"<td>{c.seconds:.1f}</td></tr>")
    extra = []
    for c in checks:
        if c.rows:
            rows = "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{esc(v)}</{'th' if i == 0 else 'td'}>"
                                            for v in r) + "</tr>" for i, r in enumerate(c.rows))
            extra.append(f"<h2>{esc(c.name)}</h2><table>{rows}</table>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font:14px system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top;
text-align:left}}.summary{{font-size:18px;font-weight:bold}}ul{{columns:3}}</style></head><body>
<h1>{esc(title)}</h1>{head}<ul>{envs}</ul>
<table><tr><th>check</th><th>claim</th><th>figure</th><th>tolerance</th><th>verdict</th><th>s</th></tr>
{''.join(body)}</table>{''.join(extra)}</body></html>
"""


def write_report(checks: List[Check], env: Dict[str, str], out_dir, title: str) -> List[Path]:
    """``report.md``, ``report.html`` and ``report.json`` in ``out_dir``."""
    import json

    from recon.data.imageio import write_atomic, write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, page = markdown(checks, env, title), html_page(checks, env, title)
    write_atomic(out / "report.md", lambda tmp: Path(tmp).write_text(md))
    write_atomic(out / "report.html", lambda tmp: Path(tmp).write_text(page))
    write_json(out / "report.json", json.loads(json.dumps(dict(environment=env, checks=[asdict(c) for c in checks]))))
    return [out / "report.md", out / "report.html", out / "report.json"]
