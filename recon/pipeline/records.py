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

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Dict, List, Optional, Sequence, Tuple

from pydantic import BaseModel, ConfigDict, Field

from recon.data.imageio import write_json
from recon.data.ownfiles import OwnFileError, inside, read_json, read_record
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


def _stage_record(path: Path, stage: str, build):
    """``build(value)`` of an earlier stage's record at ``path``, read bounded (a hand-edited or
    damaged one is refused in one line naming it and the stage that writes it)."""
    again = f"run `dvc repro -f {stage}`"
    try:
        return build(read_json(path, finite=False))      # a stage's record may hold a NaN score
    except OwnFileError as exc:
        raise MissingInputError(f"{exc}; {again}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MissingInputError(f"{path}: not what the {stage} stage writes ({type(exc).__name__}: "
                                f"{str(exc)[:200]}); {again}") from None


def aligned_faces(aligned_dir) -> List[Face]:
    """The faces the align stage wrote, from its manifest, in a fixed order."""
    aligned_dir = Path(aligned_dir)
    manifest_path = aligned_dir / "manifest.json"
    if not manifest_path.is_file():
        raise MissingInputError(f"{manifest_path}: missing (run the align stage first)")

    def faces(manifest) -> List[Face]:
        return [Face(name=Path(f["file"]).stem, file=str(aligned_dir / f["file"]), photo=photo, quad=f["quad"],
                     mask=str(aligned_dir / f["mask"]) if f.get("mask") else None)
                for photo, entry in sorted(manifest["images"].items()) for f in entry["faces"]]
    return _stage_record(manifest_path, "align", faces)


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
    ops: Optional[List[dict]] = None        # its own ops, where the mode resolves them per face (observed auto)
    detected: Optional[dict] = None         # what was found out about it (its size in the photo, gray or not)


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
    photos: Optional[List[str]] = None          # the file-name patterns of the photos it is for (None: all)

    FILE = "targets.json"

    @classmethod
    def load(cls, folder) -> "Targets":
        path = Path(folder) / cls.FILE
        if not path.is_file():
            raise MissingInputError(f"{path}: missing (run the degrade stage first)")
        return _stage_record(path, f"degrade@{Path(folder).name}", lambda data: cls(
            mode=data["mode"], ops=data["ops"], seed=int(data.get("seed", 0)), observed=bool(data.get("observed")),
            faces=[Target(**t) for t in data["faces"]], skipped=data.get("skipped", []), photos=data.get("photos")))

    def save(self, folder) -> Path:
        return write_json(Path(folder) / self.FILE, asdict(self))

    def ops_of(self, face: Target) -> List[dict]:
        """The ops of one of its faces: the face's own where the mode resolved them per face."""
        return face.ops if face.ops is not None else self.ops


# ----------------------------------------------------------------------------------------------
# Receipts

OTHER_SETTINGS = "made with other settings or inputs"
MANY_RERUNS = 3


def say_reruns(label: str, reruns: List[Tuple[str, str, str]], say) -> None:
    """The faces or cells that run again (``(name, folder, why)``): a line each, or, when more than
    :data:`MANY_RERUNS` run again for the same reason (a setting changed), one line for them all."""
    by_reason: Dict[str, List[Tuple[str, str]]] = {}
    for name, folder, why in reruns:
        by_reason.setdefault(why, []).append((name, folder))
    for why, items in by_reason.items():
        if len(items) > MANY_RERUNS:
            names = ", ".join(n for n, _ in items[:MANY_RERUNS])
            say(f"{label}: {len(items)} run again ({why}): {names} and {len(items) - MANY_RERUNS} more")
        else:
            for name, folder in items:
                say(f"{label}: {name} runs again: {folder}: {why}")


def write_receipt(folder, name: str, data: dict, files: List[str]) -> Path:
    """Write the receipt ``folder/name``: ``data`` plus the sha256 of each of ``files`` (names in
    ``folder``). Written last, after the files it vouches for."""
    folder = Path(folder)
    return write_json(folder / name, dict(data, files={f: sha256_of(folder / f) for f in files}))


class ReceiptRecord(BaseModel):
    """What every receipt holds (the rest is the stage's own: the settings, the scores)."""
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    fingerprint: Annotated[str, Field(min_length=1, max_length=200)]
    files: Dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]


MAX_RECEIPT_BYTES = 4 << 20


def check_receipt(folder, name: str, fingerprint: str,
                  required: Optional[Sequence[str]] = None) -> Tuple[Optional[dict], Optional[str]]:
    """``(receipt, problem)``: ``problem`` is None when the receipt ``folder/name`` vouches for
    finished work made with ``fingerprint``: every file of ``required`` (the set its result type
    saves; None: the files it lists) and nothing else is listed, each a file of ``folder`` itself
    (no link, no way out of the folder) with its recorded digest. Else what is wrong
    (``"missing"``, unreadable and why, :data:`OTHER_SETTINGS`, or which file is missing, differs
    or should not be there)."""
    folder = Path(folder)
    if folder.is_symlink():
        return None, f"{folder} is a link, not a folder recon made"
    try:
        record = read_record(folder / name, ReceiptRecord, max_bytes=MAX_RECEIPT_BYTES)
    except FileNotFoundError:
        return None, "missing"
    except OwnFileError as exc:
        return None, f"{name} is unreadable ({str(exc).split(': ', 1)[-1]})"
    receipt = record.model_dump()
    if record.fingerprint != fingerprint:
        return receipt, OTHER_SETTINGS
    files = record.files
    outside = next((f for f in files if not inside(f)), None)
    if outside is not None:
        return receipt, f"{name} lists {outside[:100]!r}, which is not a file of its own folder"
    if required is not None:
        missing = [f for f in required if f not in files]
        if missing:
            return receipt, f"{name} does not vouch for {missing[0]}"
        extra = [f for f in files if f not in set(required)]
        if extra:
            return receipt, f"{name} lists {extra[0]}, which this result does not have"
    for f, digest in files.items():
        path = folder / f
        if path.is_symlink() or not path.is_file():
            return receipt, f"{f} is missing"
        if sha256_of(path) != digest:
            return receipt, f"{f} differs from what {name} recorded (damaged or replaced)"
    return receipt, None
