"""Read ``params.yaml`` with a YAML 1.2 parser (PyYAML would read ``1e5`` as a string)."""
from __future__ import annotations

from pathlib import Path


def load_params(path="params.yaml") -> dict:
    from ruamel.yaml import YAML

    path = Path(path)
    try:
        with open(path) as f:
            data = YAML(typ="safe", pure=True).load(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: params file not found") from exc
    return _plain(data or {})


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def section(params: dict, name: str) -> dict:
    if name not in params or not isinstance(params[name], dict):
        raise KeyError(f"params.yaml has no '{name}' section")
    return params[name]
