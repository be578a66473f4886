"""Where and how a stage runs (``project.runtime``): the device, the batch size, the number of
worker processes and CPU threads. None of it changes a result. The settings arrive validated
(:class:`recon.config.Runtime`); what is checked here is what only this machine can say."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from recon.config import ProjectorConfig, Runtime, params_key
from recon.errors import ParamsError

MAX_AUTO_BATCH = 16
MEMORY_HEADROOM = 0.8     # of the free device memory, the rest for the allocator and other tenants


def resolve_device(device: str = "auto", key: Optional[str] = None) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device that this machine does not
    have is refused (:class:`ParamsError` naming ``key``, by default the params' device key)."""
    key = key or params_key("project.runtime.device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            raise ParamsError(f"{key}: {device} is not available on this machine (no CUDA device; use auto or cpu)")
        if index >= torch.cuda.device_count():
            raise ParamsError(f"{key}: {device} is not available on this machine "
                              f"({torch.cuda.device_count()} CUDA devices)")
    return device


def batch_for_memory(per_target: int, fixed: int, free: int, cap: int = MAX_AUTO_BATCH,
                     headroom: float = MEMORY_HEADROOM) -> int:
    """The largest batch with ``fixed + batch * per_target <= headroom * free``, in [1, cap]."""
    room = headroom * free - fixed
    return int(max(1, min(cap, room // max(per_target, 1))))


def measured_batch_size(G, vgg, device: str) -> int:
    """One projection step's peak memory at batch 1 and 2 on ``device`` (the run's generator and
    VGG, the official settings) gives the memory per target; see :func:`batch_for_memory`."""
    from recon.restore import make_method

    R = G.img_resolution
    peaks = []
    for b in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        method = make_method(G, vgg, ProjectorConfig(num_steps=1, w_avg_samples=100, snapshot_every=0))
        method.restore(torch.zeros(b, 3, R, R, device=device))
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
    per_target = max(peaks[1] - peaks[0], 1)
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    batch = batch_for_memory(per_target, peaks[0] - per_target, free)
    print(f"batch_size auto: {per_target / 2**20:.0f} MiB per target, {free / 2**30:.1f} GiB free -> batch {batch}",
          flush=True)
    torch.cuda.empty_cache()
    return batch


def resolve_batch(runtime: Runtime, device: str, G=None, vgg=None) -> int:
    """``batch_size``, or for ``auto``: 1 on CPU (measured: a batch costs more per target there
    than one target at a time); on CUDA the largest batch whose measured step memory fits the free
    memory with headroom, capped at 16 (4 without loaded models to measure with)."""
    if runtime.batch_size != "auto":
        return int(runtime.batch_size)
    if not device.startswith("cuda"):
        return 1
    return measured_batch_size(G, vgg, device) if G is not None else 4


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, its cgroup's CPU quota and
    ``SLURM_CPUS_PER_TASK``, whichever is smallest (``os.cpu_count()`` counts the whole machine)."""
    counts = [len(os.sched_getaffinity(0))] if hasattr(os, "sched_getaffinity") else [os.cpu_count() or 1]
    quota = _cgroup_quota()
    if quota:
        counts.append(quota)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    return max(1, min(counts))


def _cgroup_quota() -> Optional[int]:
    """The cgroup CPU limit in whole CPUs (rounded up), or None without one."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]      # cgroup v2
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())      # cgroup v1
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0:
            return max(1, -(-quota_us // period_us))
    except (OSError, ValueError):
        pass
    return None


def resolve_workers(workers: Union[int, str], device: str, key: Optional[str] = None) -> int:
    """``auto`` -> one worker per visible GPU on CUDA, else 1. A number is refused when this
    machine cannot run that many: more than its GPUs on CUDA (one each), more than the CPUs this
    process may use on the CPU."""
    key = key or params_key("project.runtime.workers")
    if workers == "auto":
        return max(torch.cuda.device_count(), 1) if device.startswith("cuda") else 1
    n = int(workers)
    if device.startswith("cuda"):
        have = torch.cuda.device_count()
        if n > have:
            raise ParamsError(f"{key}: {n} workers, but this machine has {have} CUDA device{'s' * (have != 1)} "
                              "(one worker per GPU)")
    elif n > usable_cpus():
        have = usable_cpus()
        raise ParamsError(f"{key}: {n} workers, but this process may use {have} CPU{'s' * (have != 1)} "
                          "(affinity, cgroup quota, SLURM_CPUS_PER_TASK); at most that many")
    return n


def threads_per_worker(workers: int) -> int:
    """CPU threads for each of ``workers`` processes sharing this process's CPUs."""
    return max(1, usable_cpus() // max(workers, 1))


def worker_device(device: str) -> str:
    """The device of this worker: ``cuda`` (or ``auto`` resolved to it) becomes ``cuda:K`` with K
    the worker's local index, ``LOCAL_RANK`` under torchrun or ``SLURM_LOCALID`` under srun
    (modulo the visible devices); ``cuda:N`` and ``cpu`` are kept as given; no index otherwise
    (the visible devices decide: ``CUDA_VISIBLE_DEVICES``)."""
    if device != "cuda":
        return device
    local = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID")
    if local is None or not local.isdigit():
        return device
    return f"cuda:{int(local) % max(torch.cuda.device_count(), 1)}"


def configure_worker(device: str) -> None:
    """Pin a worker: its CUDA device current, or on the CPU its share of the usable CPUs (the
    processes torchrun started on this machine share them; ``srun --cpus-per-task`` and cgroup
    quotas are already in :func:`usable_cpus`; ``OMP_NUM_THREADS``, when set, is kept)."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    elif "OMP_NUM_THREADS" not in os.environ:         # a user's own setting wins
        torch.set_num_threads(threads_per_worker(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
