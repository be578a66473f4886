"""What the stages pass each other, as typed records, and the receipts that vouch for finished work.

* :class:`Face`: one aligned face (the align stage's ``manifest.json``).
* :class:`Target` and :class:`Targets`: a mode's degraded targets (``targets.json``).
* Receipts (``done.json`` of a projected face, ``cell.json`` of a benchmark cell): a fingerprint
  of everything that produced the work and the sha256 of every file it vouches for. Finished work
  is skipped only when its receipt is readable, its fingerprint is the current one and every
  file is there with its recorded digest (:func:`check_receipt`); anything else is done again,
  and the caller says why.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from recon.data.imageio import write_json
from recon.errors import MissingInputError
from recon.model.weights import sha256_of


@dataclass(frozen=True)
class Face:
    """An aligned face: ``name`` (``<photo stem>_<k>``), its image ``file``, the ``photo`` it came
    from, the ``quad`` it was cut along (photo pixels; None for images given as they are) and its
    aligned user mask (a ``<stem>_<k>_mask.png`` path, or None)."""
    name: str
    file: str
    photo: str
    quad: Optional[list] = None
    mask: Optional[str] = None


def aligned_faces(aligned_dir) -> List[Face]:
    """The faces the align stage wrote, from its manifest, in a fixed order."""
    aligned_dir = Path(aligned_dir)
    manifest_path = aligned_dir / "manifest.json"
    if not manifest_path.is_file():
        raise MissingInputError(f"{manifest_path}: missing (run the align stage first)")
    manifest = json.loads(manifest_path.read_text())
    faces = []
    for photo, entry in sorted(manifest["images"].items()):
        for f in entry["faces"]:
            faces.append(Face(name=Path(f["file"]).stem, file=str(aligned_dir / f["file"]), photo=photo,
                              quad=f["quad"], mask=str(aligned_dir / f["mask"]) if f.get("mask") else None))
    return faces


@dataclass(frozen=True)
class Target:
    """One degraded target of a mode: the face it was made from (``source`` image, ``photo``,
    ``quad``), its 8-bit target file ``degraded`` and mask file ``mask`` (names in the mode's
    folder; white = missing), and where the mask came from."""
    name: str
    source: str
    photo: str
    degraded: str
    quad: Optional[list] = None
    mask: Optional[str] = None
    mask_source: Optional[str] = None


@dataclass
class Targets:
    """A mode's ``targets.json``: its ops (as plain dicts), seed, whether the photos were already
    degraded (``observed``), the targets, and the faces skipped (``{name, photo, reason}``)."""
    mode: str
    ops: List[dict]
    seed: int
    observed: bool
    faces: List[Target]
    skipped: List[dict] = field(default_factory=list)

    FILE = "targets.json"

    @classmethod
    def load(cls, folder) -> "Targets":
        path = Path(folder) / cls.FILE
        if not path.is_file():
            raise MissingInputError(f"{path}: missing (run the degrade stage first)")
        data = json.loads(path.read_text())
        return cls(mode=data["mode"], ops=data["ops"], seed=int(data.get("seed", 0)),
                   observed=bool(data.get("observed")), faces=[Target(**t) for t in data["faces"]],
                   skipped=data.get("skipped", []))

    def save(self, folder) -> Path:
        return write_json(Path(folder) / self.FILE, asdict(self))


# ----------------------------------------------------------------------------------------------
# Receipts

OTHER_SETTINGS = "made with other settings or inputs"


def write_receipt(folder, name: str, data: dict, files: List[str]) -> Path:
    """Write the receipt ``folder/name``: ``data`` plus the sha256 of each of ``files`` (names in
    ``folder``). Written last, after the files it vouches for."""
    folder = Path(folder)
    return write_json(folder / name, dict(data, files={f: sha256_of(folder / f) for f in files}))


def check_receipt(folder, name: str, fingerprint: str) -> Tuple[Optional[dict], Optional[str]]:
    """``(receipt, problem)``: ``problem`` is None when the receipt ``folder/name`` vouches for
    finished work made with ``fingerprint`` and every file it lists is there with its recorded
    digest; else what is wrong (``"missing"``, unreadable, :data:`OTHER_SETTINGS`, or which file
    is missing or differs)."""
    path = Path(folder) / name
    if not path.is_file():
        return None, "missing"
    try:
        receipt = json.loads(path.read_text())
        files: Dict[str, str] = receipt["files"]
        made_with = receipt["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{name} is unreadable ({type(exc).__name__}: {exc})"
    if made_with != fingerprint:
        return receipt, OTHER_SETTINGS
    for f, digest in files.items():
        if not (Path(folder) / f).is_file():
            return receipt, f"{f} is missing"
        if sha256_of(Path(folder) / f) != digest:
            return receipt, f"{f} differs from what {name} recorded (damaged or replaced)"
    return receipt, None
