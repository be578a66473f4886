"""What a long stage tells its user: one bar for the whole stage (faces done of total, ETA), a
line per finished face with its final loss, the projected total time once the first steps have
been timed, and a warning up front when the settings make a run impractically long."""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

from tqdm import tqdm

ESTIMATE_AFTER_S = 5.0      # print the projected total once this much time and
ESTIMATE_AFTER_STEPS = 5    # this many steps have been timed


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
            "the 256 px generator (weights.generator.source: ngc-ffhq-256, align.resolution: 256) and fewer "
            "steps (project.default.num_steps: 200); or run on a GPU")


POLL_S = 2.0                # how often the main rank counts the faces that the others finished


class StageProgress:
    """The bar of one stage, counting faces (fractions of a face as their steps go by).

    With several workers only the main rank shows it (``enabled``); ``count_done`` then tells it
    how many faces the whole group has finished (it reads their ``done.json``), so the bar and
    its ETA cover every rank."""

    def __init__(self, label: str, total: int, done: int, steps_per_face: int, enabled: bool = True,
                 count_done: Optional[Callable[[], int]] = None, workers: int = 1):
        self.label, self.steps_per_face, self.enabled = label, steps_per_face, enabled
        self.bar = tqdm(total=total, initial=done, desc=label, disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} faces "
                                   "[{elapsed}<{remaining}]")
        self.base, self.count_done, self.own, self.polled_at = done, count_done, 0.0, 0.0
        self.todo_steps = (total - done) * steps_per_face / max(workers, 1)
        self.timed_steps: float = 0
        self.timed_s, self.estimated = 0.0, False

    def batch(self, size: int, start_step: int = 0) -> Callable[[int], None]:
        """The ``on_step`` callback for a batch of ``size`` faces (resumed at ``start_step``)."""
        state = dict(last=start_step, t=time.perf_counter())

        def on_step(step: int) -> None:
            now = time.perf_counter()
            steps = step - state["last"]
            if self.count_done is not None and now - self.polled_at >= POLL_S:
                self.polled_at = now
                self.base = self.count_done()
            self.own = size * step / self.steps_per_face      # the batch in progress
            self.bar.update(max(self.base + self.own, self.bar.n) - self.bar.n)
            self.timed_steps += size * steps
            self.timed_s += now - state["t"]
            state.update(last=step, t=now)
            if (not self.estimated and self.timed_steps >= ESTIMATE_AFTER_STEPS
                    and self.timed_s >= ESTIMATE_AFTER_S):
                self.estimated = True
                rate = self.timed_s / self.timed_steps
                left = max(self.todo_steps - self.timed_steps, 0) * rate
                self.write(f"about {duration(left)} to go ({rate:.3g} s per face-step)")
        return on_step

    def face_done(self, name: str, history) -> None:
        last = history[-1]
        if self.count_done is None:
            self.base += 1
        self.write(f"{name} done: distance {last['dist']:.4g}, loss {last['loss']:.4g}")

    def write(self, text: str) -> None:
        if self.enabled:
            tqdm.write(f"{self.label}: {text}", file=sys.stderr)

    def batch_done(self) -> None:
        self.own = 0.0

    def close(self) -> None:
        if self.count_done is not None:
            self.base, self.own = self.count_done(), 0.0
        self.bar.update(max(self.base + self.own, self.bar.n) - self.bar.n)
        self.bar.close()
