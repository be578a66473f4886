"""Units of work that any process can claim and finish on its own, from a shared output folder.

A stage cuts its work into units (a batch of faces, a study cell, a benchmark cell and method),
each with a cost, and records them once in a plan (``<out>/.work/plan.json``, made by whichever
worker comes first, with O_EXCL). Then every worker, started by anything (the stage under
``dvc repro``, torchrun, a SLURM array, ``xargs -P``, Ray, Dask), loops: claim the costliest unit
that is neither done nor held (a claim is a file made with O_EXCL; a worker's claims are renewed
by a heartbeat while it works), do it, write its results atomically, mark it done. A claim whose
heartbeat is older than the lease, or whose process is gone (same host), is taken over: a
worker killed mid-unit costs its unit, nothing else, and no unit is done twice. No process group,
no barrier: workers may start at different times and be preempted. ``.work/`` is in .dvcignore:
it never becomes part of an output.

Layout: ``.work/plan.json``, ``.work/claims/<unit>``, ``.work/done/<unit>``, and
``.work/log/<worker>.jsonl`` (one line per unit a worker finished: what the tests count).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from recon.data.imageio import write_json
from recon.errors import ParamsError

WORK_DIR = ".work"
POLL_S = 1.0


@dataclass(frozen=True)
class Unit:
    """One unit of a stage's work: ``id`` (a file name), ``cost`` (comparable within the stage;
    the costliest are claimed first, which balances the workers' loads) and ``data`` (what the
    stage needs to do it)."""
    id: str
    cost: float
    data: dict = field(default_factory=dict)


def worker_id() -> str:
    """This process, for claims and logs: host, pid and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _create(path: Path, data: dict) -> bool:
    """Make ``path`` holding ``data`` only if it does not exist (atomic on every POSIX filesystem,
    NFS included: O_EXCL); False when another process made it first."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkQueue:
    """The units of one stage in ``folder/.work``. ``lease_s``: how long a claim lives without a
    heartbeat before another worker may take it over."""

    def __init__(self, folder, lease_s: float = 300.0, worker: Optional[str] = None):
        self.root = Path(folder) / WORK_DIR
        self.lease_s = float(lease_s)
        self.worker = worker or worker_id()
        self.plan: Dict = {}

    # -- the plan ------------------------------------------------------------------------------

    def open(self, key: str, units: List[Unit], meta: dict, done: Optional[List[str]] = None) -> dict:
        """The plan in force: the one in the folder if it was made for ``key`` (the stage's inputs),
        else a new one of ``units`` with ``meta`` (made once, by whichever worker comes first;
        units in ``done`` are marked done at once). Returns the plan's ``meta``."""
        plan_path = self.root / "plan.json"
        for _ in range(50):
            plan = self._read_plan(plan_path)
            if plan is not None and plan.get("key") == key:
                self.plan = plan
                return plan["meta"]
            if plan is not None:            # made for other inputs: that work is over
                stale = self.root.with_name(f"{WORK_DIR}.old-{uuid.uuid4().hex[:8]}")
                try:
                    os.replace(self.root, stale)
                except OSError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
            for sub in ("claims", "done", "log"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            for unit_id in done or []:
                _create(self.root / "done" / unit_id, dict(worker="already done"))
            data = dict(key=key, meta=meta, units=[asdict(u) for u in units])
            if _create(plan_path, data):
                self.plan = data
                return meta
            time.sleep(0.05)                 # another worker is writing it: read it next time
        raise RuntimeError(f"{plan_path}: could not agree on a plan")

    def recorded(self, key: str, name: str):
        """``meta[name]`` of the plan in the folder if it was made for ``key``, else None."""
        plan = self._read_plan(self.root / "plan.json")
        return plan["meta"].get(name) if plan is not None and plan.get("key") == key else None

    def reopen(self, unit_ids: List[str]) -> None:
        """Units marked done whose results no longer hold (damaged since): to be done again."""
        for unit_id in unit_ids:
            (self.root / "done" / unit_id).unlink(missing_ok=True)

    @staticmethod
    def _read_plan(path: Path) -> Optional[dict]:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            time.sleep(0.05)                 # being written (O_EXCL made it empty first)
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return {"key": None}         # unreadable: replaced

    @property
    def units(self) -> List[Unit]:
        return [Unit(**u) for u in self.plan["units"]]

    # -- claims --------------------------------------------------------------------------------

    def is_done(self, unit_id: str) -> bool:
        return (self.root / "done" / unit_id).is_file()

    def done_ids(self) -> List[str]:
        return [u.id for u in self.units if self.is_done(u.id)]

    def all_done(self) -> bool:
        return all(self.is_done(u.id) for u in self.units)

    def _stale(self, claim: Path) -> bool:
        try:
            age = time.time() - claim.stat().st_mtime
            holder = json.loads(claim.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            return time.time() - claim.stat().st_mtime > 5.0 if claim.exists() else False
        if age > self.lease_s:
            return True
        return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0)))

    def claim_next(self) -> Optional[Unit]:
        """Claim the costliest unit that is neither done nor held (taking over stale claims)."""
        for unit in sorted(self.units, key=lambda u: (-u.cost, u.id)):
            if self.is_done(unit.id):
                continue
            claim = self.root / "claims" / unit.id
            if claim.exists():
                if not self._stale(claim):
                    continue
                tomb = claim.with_name(f".{unit.id}.stale-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(claim, tomb)            # only one taker wins this
                except FileNotFoundError:
                    continue
                tomb.unlink(missing_ok=True)
            if _create(claim, dict(worker=self.worker, host=socket.gethostname(), pid=os.getpid(),
                                   since=time.time())):
                if self.is_done(unit.id):             # finished between the check and the claim
                    claim.unlink(missing_ok=True)
                    continue
                return unit
        return None

    @contextmanager
    def working_on(self, unit: Unit) -> Iterator[None]:
        """Hold ``unit``'s claim (renewing it) while the block runs; mark it done when the block
        ends normally, release it otherwise."""
        claim = self.root / "claims" / unit.id
        stop = threading.Event()

        def beat():
            while not stop.wait(max(self.lease_s / 4, 0.2)):
                try:
                    os.utime(claim)
                except OSError:
                    return
        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            stop.set()
            claim.unlink(missing_ok=True)
            raise
        stop.set()
        write_json(self.root / "done" / unit.id, dict(worker=self.worker, at=time.time()))
        with open(self.root / "log" / f"{self.worker}.jsonl", "a") as f:
            f.write(json.dumps(dict(unit=unit.id, worker=self.worker)) + "\n")
        claim.unlink(missing_ok=True)

    def run(self, do) -> int:
        """Claim and do units (``do(unit)``) until none is left to claim; returns how many this
        worker did."""
        count = 0
        while True:
            unit = self.claim_next()
            if unit is None:
                return count
            with self.working_on(unit):
                do(unit)
            count += 1


def drive(queue: WorkQueue, do, wait: bool = True, on_poll=None) -> int:
    """Do units until none is left; with ``wait``, then wait until every unit is done, taking
    over any whose worker died meanwhile. Returns the units this worker did."""
    count = queue.run(do)
    while wait and not queue.all_done():
        if on_poll is not None:
            on_poll()
        time.sleep(POLL_S)
        count += queue.run(do)
    return count


def check_batch(recorded: int, given, key: str = "params.yaml: project.runtime.batch_size") -> None:
    """A worker given a batch size other than the one recorded in the stage's plan is refused:
    results depend on the batches, so the work is never cut twice."""
    if given != "auto" and int(given) != int(recorded):
        raise ParamsError(f"{key}: {given}, but this stage's work was planned in batches of {recorded} (recorded in "
                          f"its {WORK_DIR}/plan.json); use {recorded} or auto, or delete {WORK_DIR} to plan it again")
