"""``recon verify``: does this install compute what the README says? One command, on the user's own
machine and device, that checks recon against the fixtures in the repository (``tests/fixtures``:
outputs of NVIDIA's and the robust method's reference code, and of NVIDIA's FFHQ alignment) and
writes one report (``report.md``, ``report.html``, ``report.json``) with each check's figure,
tolerance and verdict, the versions and the devices. It exits non-zero when a check fails.

The checks (:mod:`recon.verify.checks`): the generator's outputs and gradients, the custom ops,
the CUDA kernels against their references (on CUDA), the official projector's recorded run
replayed, the robust method's recorded run replayed (with the fixture's degradation and through
the pipeline's own), FFHQ alignment (from the recorded landmarks, and end to end with dlib), the
precision gate for each faster mode the device has, and a short speed bench (against NVIDIA's own
projector given its checkout). ``--quick`` is the test suite's variant: fewer faces and steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from recon.errors import ParamsError

# The fixtures of the checkout recon is installed from (setup.sh installs it editable).
DEFAULT_FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
FIXTURE_FILES = ("stylegan2-tiny-a/G_ema.safetensors", "stylegan2-tiny-a/cases.safetensors",
                 "stylegan2-tiny-a/config.json", "stylegan2-tiny-a/ops.safetensors",
                 "stylegan2-tiny-a/projector.safetensors", "robust-tiny-a/robust.safetensors",
                 "align/landmarks.json", "faces/SOURCES.md")


def fixtures_dir(path=None) -> Path:
    """The fixtures folder (``--fixtures``, else the checkout's ``tests/fixtures``), checked."""
    folder = Path(path) if path else DEFAULT_FIXTURES
    missing = [f for f in FIXTURE_FILES if not (folder / f).is_file()]
    if missing:
        raise ParamsError(f"--fixtures {folder}: not recon's fixtures folder (no {', '.join(missing[:3])}); recon "
                          "verify reads tests/fixtures of a clone of the repository: run it from one, or name the "
                          "folder with --fixtures")
    return folder


def run_verify(device: str = "cpu", out="verify", quick: bool = False, fixtures=None,
               official_src: Optional[str] = None, weights="weights",
               say: Callable[[str], None] = print) -> int:
    """Run every check on ``device``, write the report into ``out``; 0 when none failed, else 1."""
    import torch

    from recon.model.weights import RECORD, resolve_weights
    from recon.pipeline.runtime import resolve_device

    from .checks import Context, run_checks
    from .report import environment, write_report

    device = resolve_device(device, key="--device")
    folder = fixtures_dir(fixtures)
    if official_src:
        from recon.bench import official_source
        official_src = str(official_source(official_src))
    vgg = resolve_weights(weights).vgg16 if (Path(weights) / RECORD).is_file() else None
    torch.manual_seed(0)
    say(f"recon verify on {device}{' (quick)' if quick else ''}: fixtures {folder}")
    checks = run_checks(Context(folder, device, quick, official_src or None, vgg), say)
    paths = write_report(checks, environment(device), out, f"recon verify on {device}" + (" (quick)" if quick else ""))
    failed = [c.name for c in checks if c.failed]
    say(f"recon verify: {'FAILED: ' + ', '.join(failed) if failed else 'every check passed'}; report: {paths[0]}, "
        f"{paths[1]}")
    return 1 if failed else 0


__all__ = ["DEFAULT_FIXTURES", "fixtures_dir", "run_verify"]
