"""Many worker processes on one machine, on PyTorch's elastic launcher (torchrun).

The workers share nothing but the output folder: each claims units of the stage's work
(:mod:`recon.pipeline.units`) until none is left, so they need no process group and no barrier.
The launcher is kept for what it is good at: starting N local processes and restarting them when
one dies (``project.runtime.max_restarts``). Any other launcher (a SLURM array, ``xargs -P``, Ray,
Dask, several shells) can start the same workers: ``recon work <stage>`` (README, Scaling out).
"""
from __future__ import annotations

import os
import signal
import sys
import uuid
from typing import Sequence


def launched() -> bool:
    """True when torchrun started this process (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def is_main() -> bool:
    """The worker that shows the stage's progress: rank 0 under torchrun, any process otherwise."""
    return os.environ.get("RANK", "0") == "0"


def label(name: str) -> str:
    """``name [worker k]`` among several workers of one launcher."""
    rank = os.environ.get("RANK") if launched() else None
    return f"{name} [worker {rank}]" if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else name


def relaunch(name: str, workers: int, max_restarts: int, argv: Sequence[str]) -> int:
    """Run ``python argv...`` as ``workers`` local processes under the elastic launcher (what
    ``torchrun --standalone --nproc-per-node=workers --max-restarts=max_restarts`` does);
    returns the exit status for the stage."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # A restarted group must not find the killed group's keys (pytorch/pytorch#135712).
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts,
                          monitor_interval=0.5, start_method="spawn")
    print(f"{name}: {workers} workers (restarted up to {max_restarts} times on failure)", file=sys.stderr, flush=True)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*argv)
    except ChildFailedError as exc:
        first, _ = exc.get_first_failure()
        failed = ", ".join(f"worker {r} {exit_reason(f.exitcode)}" + (" (the first to fail)" if r == first else "")
                           for r, f in sorted(exc.failures.items()))
        print(f"{name}: error: {failed}, after {max_restarts} restarts; their messages are above; rerun to resume",
              file=sys.stderr, flush=True)
        return 1
    return 0


def exit_reason(code: int) -> str:
    """How a worker ended, in words: ``was killed by SIGKILL`` for a negative code, else ``exited with 1``."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"
