"""What a long stage tells its user: one display for the whole stage (items done of total, with
fractions as steps go by, rate and ETA), a line per finished item, and a warning up front when
the settings make a run impractically long.

On a terminal the display is a tqdm bar. Anywhere else (``dvc repro | tee log``, a batch job's
output file) it is one plain line per update, at most every :data:`LINE_INTERVAL_S` seconds
(``RECON_PROGRESS_INTERVAL``), each with the time of day, so a log reads line by line instead of
one carriage-return-joined line; the last one says how long the whole took. Both take their ETA
from the same rate: the items done since the display started (what a resumed run had done before
does not count as done now). Once the first steps are timed, the display says how long the work
left will take on this device, once.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Dict, Optional, Tuple

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
        self.estimated = False
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
        (resumed at ``start_step``: that part was done before, so it does not count in the rate).
        After the second step timed here, one line estimates the work left on this device."""
        self.start_n += size * start_step / max(steps_per_item, 1)
        timed: Dict[str, Optional[Tuple[int, float]]] = {"from": None}

        def on_step(step: int) -> None:
            self.own = size * step / max(steps_per_item, 1)
            if step == start_step:
                pass
            elif timed["from"] is None:
                timed["from"] = (step, time.perf_counter())        # the first step warms up: timed after it
            elif not self.estimated and step >= timed["from"][0] + 2:
                first, t0 = timed["from"]
                per_step = (time.perf_counter() - t0) / (step - first)
                left = (self.total - self.n) / max(size, 1) * steps_per_item * per_step
                self.estimated = True
                self.write(f"a step of {size} {self.unit if size != 1 else self.unit.rstrip('s')} takes "
                           f"{per_step:.2g} s here: about {duration(left)} for the {self.total - self.n:.1f} "
                           f"{self.unit} left")
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
            print(f"{time.strftime('%H:%M:%S')} {self.label}: {self.status()}", file=self.stream, flush=True)

    def status(self) -> str:
        """``3.2/10 faces (32%), 41 s per face, about 5 min left``."""
        elapsed = time.perf_counter() - self.start_t
        text = f"{self.n:.1f}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%)"
        gained = self.n - self.start_n
        if gained > 0.01 and elapsed > 1.0:
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

    def write(self, text: str, always: bool = False) -> None:
        """One line (beside the bar on a terminal); ``always``: also with progress disabled (a
        warning the user must see)."""
        if self.enabled or always:
            if self.bar is not None:
                tqdm.write(f"{self.label}: {text}", file=self.stream)
            else:
                print(f"{time.strftime('%H:%M:%S')} {self.label}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        self.own = 0.0
        if self.bar is not None:
            self.update(force=True)
            self.bar.close()
        elif self.count_done is not None:
            self.base = float(self.count_done())
        if self.enabled:
            made = self.n - self.start_n
            took = time.perf_counter() - self.start_t
            per = f" ({duration(took / made)} per {self.unit.rstrip('s')})" if made >= 1 else ""
            self.write(f"{self.n:.0f}/{self.total} {self.unit} done; {made:.0f} here in {duration(took)}{per}")
