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

Every one of these files is read back as an input (:mod:`recon.data.ownfiles`): bounded, checked
against its schema, links refused. A plan is used only when it was made for the stage's inputs
and its units are exactly those the stage cuts from them (plain ids made by recon, every input in
one unit, the recorded batch size valid); anything else is planned again, with a line saying why.
A claim that is not a record of a live holder is stale and taken over, with a line. Nothing is
created, written or removed outside the output folder: ``.work`` and its subfolders are made
real directories of their own (a link in their place is removed), and every name joined to them is
a plain one.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Dict, Iterator, List, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recon.data.imageio import write_json
from recon.data.ownfiles import OwnFileError, own_dir, plain_name, read_record, remove
from recon.errors import ParamsError

WORK_DIR = ".work"
POLL_S = 1.0
MAX_BATCH = 1024                 # the schema's bound on project.runtime.batch_size
MAX_UNITS = 1_000_000


@dataclass(frozen=True)
class Unit:
    """One unit of a stage's work: ``id`` (a plain file name), ``cost`` (comparable within the
    stage; the costliest are claimed first, which balances the workers' loads) and ``data`` (what
    the stage needs to do it)."""
    id: str
    cost: float
    data: dict = field(default_factory=dict)


# -- the records in .work -------------------------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _plain(v: str) -> str:
    if not plain_name(v):
        raise ValueError(f"{v[:80]!r} is not a plain name made by recon")
    return v


class UnitRecord(_Record):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    cost: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    data: Dict[str, Any]

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _plain(v)


class PlanMeta(_Record):
    batch_size: Optional[Annotated[int, Field(ge=1, le=MAX_BATCH)]] = None


class PlanRecord(_Record):
    key: Annotated[str, Field(min_length=1, max_length=200)]
    meta: PlanMeta
    units: Annotated[List[UnitRecord], Field(max_length=MAX_UNITS)]


class ClaimRecord(_Record):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    worker: str
    host: str
    pid: Annotated[int, Field(ge=1)]
    since: Annotated[float, Field(allow_inf_nan=False)]


def worker_id() -> str:
    """This process, for claims and logs: host, pid and a random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _create(path: Path, data: dict) -> bool:
    """Make ``path`` holding ``data`` only if it does not exist, whole or not at all: the data is
    written to a temporary file first and linked into place (``link`` fails on an existing
    name, atomically on every POSIX filesystem, NFS included). False when it exists."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class WorkQueue:
    """The units of one stage in ``folder/.work``. ``lease_s``: how long a claim lives without a
    heartbeat before another worker may take it over; ``say``: where the lines about replaced
    plans and taken-over claims go."""

    def __init__(self, folder, lease_s: float = 300.0, worker: Optional[str] = None,
                 say: Callable[[str], None] = _say):
        self.folder = Path(folder)
        self.root = self.folder / WORK_DIR
        self.lease_s = float(lease_s)
        self.worker = worker or worker_id()
        self.say = say
        self.plan: Dict = {}

    # -- the plan ------------------------------------------------------------------------------

    def open(self, key: str, cut: Callable[[dict], List[Unit]], meta: dict,
             done: Optional[List[str]] = None) -> dict:
        """The plan in force: the one in the folder if it was made for ``key`` (the stage's inputs)
        and its units are exactly ``cut(its meta)``, else a new one of ``cut(meta)`` with
        ``meta`` (made once, by whichever worker comes first; units in ``done`` are marked done at
        once). Returns the plan's ``meta``."""
        for _ in range(50):
            problem = self._check_plan(key, cut)
            if problem is None:
                return self.plan["meta"]
            with self._lock():
                if self._check_plan(key, cut) is None:          # another worker replaced it meanwhile
                    return self.plan["meta"]
                if problem != "missing":
                    if problem != "other inputs":
                        self.say(f"{problem}; planned again from the stage's inputs")
                    self._discard()
                for sub in ("claims", "done", "log"):
                    own_dir(own_dir(self.root) / sub)
                for unit_id in done or []:
                    _create(self.root / "done" / _plain(unit_id), dict(worker="already done"))
                data = dict(key=key, meta=meta, units=[asdict(u) for u in cut(meta)])
                if _create(self.root / "plan.json", data):
                    self.plan = data
                    return meta
            time.sleep(0.05)
        raise RuntimeError(f"{self.root / 'plan.json'}: could not agree on a plan")

    def _read(self):
        """``(plan, problem)``: the plan in the folder as a record, or None and why not."""
        path = self.root / "plan.json"
        if self.root.is_symlink():
            return None, f"{self.root}: a link, not the folder recon made"
        try:
            return read_record(path, PlanRecord), None
        except FileNotFoundError:
            return None, "missing"
        except OwnFileError as exc:
            return None, str(exc)

    def _check_plan(self, key: str, cut: Callable[[dict], List[Unit]]) -> Optional[str]:
        """None when the folder's plan is usable for ``key`` (and then it is ``self.plan``), else
        what is wrong with it: "missing", "other inputs", or a line naming the file."""
        plan, problem = self._read()
        if plan is None:
            return problem
        if plan.key != key:
            return "other inputs"
        meta = plan.meta.model_dump(exclude_none=True)
        want = [asdict(u) for u in cut(meta)]
        got = [u.model_dump() for u in plan.units]
        if got != want:
            return (f"{self.root / 'plan.json'}: its units are not those of the stage's inputs "
                    f"({len(got)} units, the inputs make {len(want)}"
                    + (", ids or faces differ" if len(got) == len(want) else "") + ")")
        self.plan = dict(key=plan.key, meta=meta, units=want)
        return None

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Held while a plan is replaced, so that two workers never replace each other's new plan:
        ``flock`` on the output folder itself (no file of its own; released by the system when its
        holder dies)."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:             # a filesystem without locks: the re-check before replacing narrows the race
                pass
            yield
        finally:
            os.close(fd)

    def _discard(self) -> None:
        """Move the old ``.work`` aside and remove it (a link in its place is removed, not followed)."""
        if self.root.is_symlink() or self.root.is_file():
            self.root.unlink()
            return
        stale = self.root.with_name(f"{WORK_DIR}.old-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(self.root, stale)
        except OSError:
            return
        remove(stale)

    def recorded(self, key: str, name: str):
        """``meta[name]`` of the plan in the folder if it is valid and was made for ``key``, else None."""
        plan, _ = self._read()
        return getattr(plan.meta, name) if plan is not None and plan.key == key else None

    def reopen(self, unit_ids: List[str]) -> None:
        """Units marked done whose results no longer hold (damaged since): to be done again."""
        for unit_id in unit_ids:
            remove(self.root / "done" / _plain(unit_id))

    @property
    def units(self) -> List[Unit]:
        return [Unit(**u) for u in self.plan["units"]]

    # -- claims --------------------------------------------------------------------------------

    def is_done(self, unit_id: str) -> bool:
        marker = self.root / "done" / unit_id
        return marker.is_file() and not marker.is_symlink()

    def done_ids(self) -> List[str]:
        return [u.id for u in self.units if self.is_done(u.id)]

    def all_done(self) -> bool:
        return all(self.is_done(u.id) for u in self.units)

    def _stale(self, claim: Path) -> Optional[str]:
        """Why the claim may be taken over (None: it is held): its heartbeat is older than the
        lease, its process is gone (same host), or it is not a record of a holder at all."""
        try:
            age = time.time() - claim.lstat().st_mtime
            holder = read_record(claim, ClaimRecord, max_bytes=1 << 16)
        except FileNotFoundError:
            return None
        except OwnFileError as exc:
            return f"not a claim ({str(exc).split(': ', 1)[-1]})"
        if age > self.lease_s:
            return f"its heartbeat is {age:.0f} s old (lease {self.lease_s:g} s)"
        if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
            return f"its process {holder.pid} is gone"
        return None

    def claim_next(self) -> Optional[Unit]:
        """Claim the costliest unit that is neither done nor held (taking over stale claims)."""
        for unit in sorted(self.units, key=lambda u: (-u.cost, u.id)):
            if self.is_done(unit.id):
                continue
            claim = self.root / "claims" / unit.id
            if claim.exists() or claim.is_symlink():
                why = self._stale(claim)
                if why is None:
                    continue
                tomb = claim.with_name(f".{unit.id}.stale-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(claim, tomb)            # only one taker wins this
                except FileNotFoundError:
                    continue
                remove(tomb)
                self.say(f"{claim}: taken over ({why})")
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
        marker = self.root / "done" / unit.id
        if marker.is_symlink() or marker.is_dir():
            remove(marker)
        write_json(marker, dict(worker=self.worker, at=time.time()))
        with open(self.root / "log" / f"{self.worker}.jsonl", "a") as f:
            f.write(json.dumps(dict(unit=unit.id, worker=self.worker)) + "\n")
        claim.unlink(missing_ok=True)

    def run(self, do) -> int:
        """Claim and do units (``do(unit)``) until none is left to claim; returns how many this
        worker did. ``do`` may return a callable, called once the unit is marked done (what must
        outlive the unit until then, a snapshot, is removed there)."""
        count = 0
        while True:
            unit = self.claim_next()
            if unit is None:
                return count
            with self.working_on(unit):
                after = do(unit)
            if callable(after):
                after()
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


def check_batch(recorded: int, given, key: str = "project.runtime.batch_size") -> None:
    """A worker given a batch size other than the one recorded in the stage's plan is refused:
    results depend on the batches, so the work is never cut twice."""
    from recon.config import params_key

    if given != "auto" and int(given) != int(recorded):
        raise ParamsError(f"{params_key(key)}: {given}, but this stage's work was planned in batches of {recorded} "
                          f"(recorded in its {WORK_DIR}/plan.json); use {recorded} or auto, or delete {WORK_DIR} to "
                          "plan it again")
