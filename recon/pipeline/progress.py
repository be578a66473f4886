"""What a long stage tells its user: one display for the whole stage (items done of total, with
fractions as steps go by, rate and ETA), a line per finished item, and a warning up front when
the settings make a run impractically long.

On a terminal the display is a tqdm bar. Anywhere else (``dvc repro | tee log``, a batch job's
output file) it is one plain line per update, at most every :data:`LINE_INTERVAL_S` seconds
(``RECON_PROGRESS_INTERVAL``), so a log reads line by line instead of one carriage-return-joined
line. Both take their ETA from the same rate: the items done since the display started.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

from tqdm import tqdm

LINE_INTERVAL_S = float(os.environ.get("RECON_PROGRESS_INTERVAL", "30"))
POLL_S = 2.0                # how often the work of the other workers is counted


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 90:
        return f"{minutes} min"
    hours = minutes / 60
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def slow_settings_warning(device: str, resolution: int, faces: int, num_steps: int) -> Optional[str]:
    """A line for settings that take days on this device (1024 px on a CPU: about 10 s a step)."""
    if not device.startswith("cpu") or resolution < 512:
        return None
    per_step = 10.0 * (resolution / 1024) ** 2
    return (f"a {resolution} px generator on the CPU takes about {per_step:.0f} s a step: {faces} faces x "
            f"{num_steps} steps is about {duration(faces * num_steps * per_step)}. For a practical CPU run use "
            "`profile: quick` or the 256 px generator (weights.generator.source: ngc-ffhq-256, "
            "align.resolution: 256); or run on a GPU")


class StageProgress:
    """The progress of one stage in ``unit`` (faces, cells), ``total`` of them, ``done`` already.

    ``count_done()`` (polled every :data:`POLL_S`) says how many items every worker has finished,
    so the display covers the whole stage; the items in progress here add their fraction."""

    def __init__(self, label: str, total: int, done: int = 0, unit: str = "faces", enabled: bool = True,
                 count_done: Optional[Callable[[], float]] = None, stream=None):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.stream = stream or sys.stderr
        self.count_done = count_done
        self.base, self.own, self.polled_at = float(done), 0.0, 0.0
        self.start_n, self.start_t, self.printed_at = float(done), time.perf_counter(), 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = None
        if enabled and self.tty:
            self.bar = tqdm(total=total, initial=done, desc=label, file=self.stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} " + unit
                                       + " [{elapsed}<{remaining}]")

    @property
    def n(self) -> float:
        return min(self.base + self.own, float(self.total))

    def track(self, size: int, steps_per_item: int, start_step: int = 0) -> Callable[[int], None]:
        """The ``on_step`` callback of a batch of ``size`` items of ``steps_per_item`` steps each
        (resumed at ``start_step``)."""
        def on_step(step: int) -> None:
            self.own = size * step / max(steps_per_item, 1)
            self.update()
        on_step(start_step)
        return on_step

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.count_done is not None and (force or now - self.polled_at >= POLL_S):
            self.polled_at = now
            self.base = float(self.count_done())
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(max(self.n - self.bar.n, 0))
        elif force or now - self.printed_at >= LINE_INTERVAL_S:
            self.printed_at = now
            print(f"{self.label}: {self.status()}", file=self.stream, flush=True)

    def status(self) -> str:
        """``3.2/10 faces (32%), 41 s per face, about 5 min left``."""
        elapsed = time.perf_counter() - self.start_t
        text = f"{self.n:.1f}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%)"
        gained = self.n - self.start_n
        if gained > 0 and elapsed > 0:
            rate = elapsed / gained
            left = duration(rate * (self.total - self.n))
            text += f", {duration(rate)} per {self.unit.rstrip('s')}, about {left} left"
        return text

    def item_done(self, text: str) -> None:
        """One finished item's line; its fraction becomes a whole item."""
        self.base += 1 if self.count_done is None else 0
        self.own = 0.0
        self.write(text)
        self.update()

    def write(self, text: str) -> None:
        if self.enabled:
            if self.bar is not None:
                tqdm.write(f"{self.label}: {text}", file=self.stream)
            else:
                print(f"{self.label}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        self.own = 0.0
        self.update(force=True)
        if self.bar is not None:
            self.bar.close()
