"""Shared by the stage scripts: make the checkout's own recon importable (DVC runs `python
stages/x.py`, which puts stages/ first on sys.path) and read params.yaml."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recon.params import load_params, section  # noqa: E402

__all__ = ["ROOT", "load_params", "section"]
