"""The loss tables DVC plots: every ``loss.csv`` of a stage's results in one long table."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from recon.data.imageio import write_atomic

COLUMNS = ("step", "face", "phase", "loss", "dist")


def write_loss_table(out_dir, csv_path, path_columns: Sequence[str] = ()) -> Path:
    """Every ``loss.csv`` below ``out_dir`` in one table ``step,face,phase,loss,dist`` (``face``: the
    folder path below ``out_dir``; ``dist``: the perceptual distance without regularizers): the data
    of one DVC plot with a line per face. ``path_columns`` name the parts of that path as columns
    of their own (the study: ``setting`` and ``seed``, for its plot's colours and dashes)."""
    out_dir, csv_path = Path(out_dir), Path(csv_path)
    rows = []
    for path in sorted(out_dir.rglob("loss.csv")):
        if ".work" in path.parts:
            continue
        face = path.parent.relative_to(out_dir).as_posix()
        parts = dict(zip(path_columns, face.split("/")))
        with open(path, newline="") as f:
            rows += [dict(face=face, **parts, **{k: r[k] for k in COLUMNS if k != "face"}) for r in csv.DictReader(f)]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*COLUMNS[:2], *path_columns, *COLUMNS[2:]])
            w.writeheader()
            w.writerows(rows)
    return write_atomic(csv_path, write)
