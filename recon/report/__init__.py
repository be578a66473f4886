"""The report stage: scores computed from the stages' outputs (:mod:`.scores`), rendered as one
self-contained HTML page (:mod:`.render`), with DVC metrics."""
from .render import build_report

__all__ = ["build_report"]
