"""Fault injection for the tests of what a killed worker leaves behind: ``RECON_FAULT=<point>``
makes the process kill itself (SIGKILL, as a preemption or the OOM killer does) when it reaches
that point. Points: ``after-receipts`` (a batch's faces have their receipts, its unit is not yet
marked done). Unset, it does nothing."""
from __future__ import annotations

import os
import signal


def fault_point(name: str) -> None:
    if os.environ.get("RECON_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
