"""Many workers for the embarrassingly parallel stages, on PyTorch's elastic launcher (torchrun).

No gradients are shared between targets, so there is no DDP: each rank takes a deterministic
share of the work, runs it on its own device (``cuda:LOCAL_RANK``, or the CPU with the gloo
backend), writes into the shared output folder through the usual atomic writes and per-face
``done.json``, and meets the others at a barrier before rank 0 writes the stage's summary.

Two ways in:

* ``project.runtime.workers: N`` (or ``auto``): the stage relaunches itself under the elastic
  launcher with N local workers, restarting a failed group up to ``max_restarts`` times; the
  restarted group resumes from ``done.json`` and the snapshots.
* Started by ``torchrun`` or ``srun`` (RANK, WORLD_SIZE and LOCAL_RANK already set, on one or many
  machines with a shared filesystem): the stage uses that group as it is.
"""
from __future__ import annotations

import datetime
import os
import signal
import sys
import uuid
from dataclasses import dataclass
from typing import List, Sequence, TypeVar

import torch

from recon.errors import ProjectionError

from .runtime import threads_per_worker

T = TypeVar("T")
# A rank may wait at the closing barrier while the others finish long projections.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> List[T]:
        """This rank's items: every ``world``-th, starting at ``rank`` (the same split on every run)."""
        return list(items[self.rank::self.world])

    def label(self, name: str) -> str:
        return f"{name} [rank {self.rank}]" if self.world > 1 else name


def launched() -> bool:
    """True when a launcher (torchrun, srun + torchrun) has set this process's rank."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def current() -> Rank:
    if not launched():
        return Rank()
    return Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def relaunch(name: str, workers: int, max_restarts: int, argv: Sequence[str]) -> int:
    """Run ``python argv...`` as ``workers`` local processes under the elastic launcher (what
    ``torchrun --standalone --nproc-per-node=workers --max-restarts=max_restarts`` does);
    returns the exit status for the stage."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # A restarted group must not find the killed group's keys: give each round its own store
    # rather than the launcher's shared one (pytorch/pytorch#135712: gloo and NCCL hang in
    # init_process_group after a restart otherwise).
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts,
                          monitor_interval=0.5, start_method="spawn")
    print(f"{name}: {workers} workers (restarted up to {max_restarts} times on failure)", file=sys.stderr, flush=True)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*argv)
    except ChildFailedError as exc:
        first, _ = exc.get_first_failure()
        failed = ", ".join(f"rank {r} {exit_reason(f.exitcode)}" + (" (the first to fail)" if r == first else "")
                           for r, f in sorted(exc.failures.items()))
        print(f"{name}: error: {failed}, after {max_restarts} restarts; their messages are above; rerun to resume",
              file=sys.stderr, flush=True)
        return 1
    return 0


def exit_reason(code: int) -> str:
    """How a worker ended, in words: ``killed by SIGKILL`` for a negative code, else ``exited with 1``."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


class Group:
    """This process's place in the group; ``with Group(device) as g`` joins and leaves it."""

    def __init__(self, device: str):
        self.rank = current()
        self.device = device
        if self.rank.world > 1 and device.startswith("cuda"):
            self.device = f"cuda:{self.rank.local_rank}"
        self._joined = False

    def __enter__(self) -> "Group":
        import torch.distributed as dist

        if self.rank.world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.startswith("cuda") else "gloo"
            if self.device.startswith("cuda"):
                torch.cuda.set_device(self.device)
            else:
                # workers share this machine's usable CPUs: do not oversubscribe them
                torch.set_num_threads(threads_per_worker(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
            dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
            self._joined = True
        return self

    def barrier(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            try:
                dist.barrier()
            except RuntimeError as exc:
                raise ProjectionError(f"rank {self.rank.rank}: another worker left the group ({exc}); "
                                      "rerun to resume") from None

    def __exit__(self, *exc) -> None:
        import torch.distributed as dist

        if self._joined and dist.is_initialized():
            dist.destroy_process_group()
