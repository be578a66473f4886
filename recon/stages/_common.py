"""Shared by the stage commands (``python -m recon.stages.<stage>``, as dvc.yaml runs them from the
project folder, whose own recon ``-m`` puts first on the path): read the validated params, and
end through recon's one runner."""
import argparse
import sys

from recon.config import Params, load_params
from recon.pipeline import distributed
from recon.runner import run


def stage_main(name: str, body, doc: str, paths: dict, mode: bool = False, argv=None, units: bool = False) -> int:
    """Parse ``[mode] --<path> P ... [--params FILE]`` from ``argv`` (dvc.yaml's ``cmd`` names every
    path, so it is the one place that does), validate the whole params file, then run
    ``body(params, args)`` under the runner; returns the exit status. A stage of ``units``
    (its work shared by any number of workers) also takes ``--no-wait``: return when nothing is
    left to claim instead of when everything is done."""
    ap = argparse.ArgumentParser(description=doc)
    if mode:
        ap.add_argument("mode")
    for flag, help_text in paths.items():
        ap.add_argument(f"--{flag}", required=True, help=help_text)
    ap.add_argument("--params", default="params.yaml")
    if units:
        ap.add_argument("--no-wait", dest="wait", action="store_false",
                        help="return when no unit of work is left to claim (other workers finish the rest)")
        ap.add_argument("--state", help="the stage's work folder, outside its outputs (finished work, units, "
                                         "snapshots; default: the output folder itself)")
    args = ap.parse_args(argv)
    label = distributed.label(f"{name} {args.mode}" if mode else name)   # "[worker k]" under torchrun

    def go():
        params = load_params(args.params)
        return body(params, args)
    return run(label, go)


def start_worker(name: str, runtime):
    """This process as a worker of a stage whose work is shared: ``(device, None)``, or ``(None,
    status)`` when ``project.runtime.workers`` asked for several processes and this one launched
    them (torchrun's elastic launcher, restarting them on failure) and has their status."""
    from recon.pipeline.runtime import configure_worker, resolve_device, resolve_workers, worker_device

    device = resolve_device(runtime.device)
    workers = resolve_workers(runtime.workers, device)
    if workers > 1 and not distributed.launched():
        return None, distributed.relaunch(name, workers, runtime.max_restarts, sys.argv)
    device = worker_device(device)
    configure_worker(device)
    return device, None


__all__ = ["Params", "stage_main", "start_worker"]
