"""A stage's work folder and its output folder.

DVC keeps no run-cache for a stage whose outputs are ``persist: true``, and without ``persist`` it
deletes a stage's outputs before running it again. So the shared stages (project, synthetic,
benchmark) work in a folder of their own outside the outputs (``--state``, under ``.recon/state``
in the pipeline: finished faces and cells with their receipts, the work units, the snapshots),
which survives an interrupted or repeated run, and once every unit is done the worker that sees it
copies the results into the output folder DVC tracks (:func:`mirror`). The outputs are then plain
outputs: returning to an earlier setting restores them from DVC's run-cache without running the
stage, and a rerun finds every finished face in the work folder instead of projecting it again.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from recon.data.ownfiles import own_dir, remove


def mirror(work_dir, out_dir) -> None:
    """Make ``out_dir`` hold exactly the results in ``work_dir``: every entry but the hidden ones
    (``.work``, ``.snapshots``), copied (links are not followed: recon makes none there); what
    else ``out_dir`` holds is removed."""
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    if work_dir.resolve() == out_dir.resolve():
        return
    own_dir(out_dir)
    keep = {p.name for p in work_dir.iterdir() if not p.name.startswith(".")}
    for entry in out_dir.iterdir():
        if entry.name not in keep:
            remove(entry)
    for name in sorted(keep):
        src, dst = work_dir / name, out_dir / name
        remove(dst)
        if src.is_symlink():
            continue
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".*"))
        else:
            shutil.copy2(src, dst)
