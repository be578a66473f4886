"""The work queue: a plan made once, units claimed exactly once by any number of workers, stale
claims taken over, the batch size recorded once; and the launcher's words for a dead worker."""
import json
import os
import signal
import threading
import time

import pytest

from recon.errors import ParamsError
from recon.pipeline.distributed import exit_reason
from recon.pipeline.units import Unit, WorkQueue, check_batch, drive


def units(n):
    return [Unit(f"u{k:02d}", float(k % 5 + 1), dict(k=k)) for k in range(n)]


def test_the_plan_is_made_once_and_replaced_only_for_other_inputs(tmp_path):
    a = WorkQueue(tmp_path, worker="a")
    assert a.open("key1", lambda meta: units(4), dict(batch_size=2)) == dict(batch_size=2)
    b = WorkQueue(tmp_path, worker="b")
    assert b.open("key1", lambda meta: units(4), dict(batch_size=7)) == dict(batch_size=2)     # the first plan holds
    assert b.recorded("key1", "batch_size") == 2 and b.recorded("other", "batch_size") is None
    assert [u.id for u in b.units] == ["u00", "u01", "u02", "u03"]
    with b.working_on(b.claim_next()):
        pass
    c = WorkQueue(tmp_path, worker="c")
    assert c.open("key2", lambda meta: units(3), dict(batch_size=5)) == dict(batch_size=5)      # new inputs: a new plan
    assert c.done_ids() == [] and len(c.units) == 3


def test_every_unit_is_done_exactly_once_by_concurrent_workers(tmp_path):
    did = []
    lock = threading.Lock()

    def worker(name):
        q = WorkQueue(tmp_path, worker=name)
        q.open("k", lambda meta: units(40), {})

        def do(unit):
            time.sleep(0.002)
            with lock:
                did.append(unit.id)
        drive(q, do)
    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(did) == sorted(u.id for u in units(40))          # each unit once
    logged = [json.loads(line)["unit"] for p in (tmp_path / ".work" / "log").iterdir()
              for line in p.read_text().splitlines()]
    assert sorted(logged) == sorted(did)


def test_the_costliest_units_go_first_and_done_ones_are_skipped(tmp_path):
    q = WorkQueue(tmp_path, worker="a")
    q.open("k", lambda meta: units(6), {}, done=["u04"])                          # u04 costs 5: already done
    order = []
    drive(q, lambda unit: order.append(unit.id))
    assert order == ["u03", "u02", "u01", "u00", "u05"]


def test_a_dead_or_silent_workers_claim_is_taken_over(tmp_path):
    q = WorkQueue(tmp_path, lease_s=60, worker="a")
    q.open("k", lambda meta: units(2), {})
    first = q.claim_next()
    assert first.id == "u01" and q.claim_next().id == "u00" and q.claim_next() is None
    # a claim of a process that is gone (same host) is taken over at once
    claim = tmp_path / ".work" / "claims" / "u01"
    data = json.loads(claim.read_text())
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    claim.write_text(json.dumps(dict(data, pid=child)))
    b = WorkQueue(tmp_path, lease_s=60, worker="b")
    b.open("k", lambda meta: units(2), {})
    assert b.claim_next().id == "u01"
    # a live claim is left alone until its heartbeat is older than the lease
    q2 = WorkQueue(tmp_path, lease_s=0.5, worker="c")
    q2.plan = q.plan
    assert q2.claim_next() is None
    old = time.time() - 10
    os.utime(tmp_path / ".work" / "claims" / "u00", (old, old))
    assert q2.claim_next().id == "u00"


def test_a_heartbeat_keeps_a_long_unit_claimed(tmp_path):
    q = WorkQueue(tmp_path, lease_s=0.4, worker="a")
    q.open("k", lambda meta: units(1), {})
    other = WorkQueue(tmp_path, lease_s=0.4, worker="b")
    other.plan = q.plan
    unit = q.claim_next()
    with q.working_on(unit):
        time.sleep(1.2)                                             # three leases
        assert other.claim_next() is None
    assert q.all_done() and other.claim_next() is None


def test_a_failed_unit_is_released_for_another_worker(tmp_path):
    q = WorkQueue(tmp_path, worker="a")
    q.open("k", lambda meta: units(1), {})
    with pytest.raises(RuntimeError):
        with q.working_on(q.claim_next()):
            raise RuntimeError("out of memory")
    assert not q.all_done()
    b = WorkQueue(tmp_path, worker="b")
    b.plan = q.plan
    assert b.claim_next().id == "u00"


def test_one_batch_size_per_stage():
    check_batch(16, "auto")
    check_batch(16, 16)
    with pytest.raises(ParamsError, match=r"project.runtime.batch_size: 12, but this stage's work was planned in "
                                          r"batches of 16"):
        check_batch(16, 12)


def test_how_a_worker_ended_is_said_in_words():
    assert exit_reason(-signal.SIGKILL) == "was killed by SIGKILL"
    assert exit_reason(-signal.SIGTERM) == "was killed by SIGTERM"
    assert exit_reason(1) == "exited with 1"
