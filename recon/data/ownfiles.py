"""The files recon writes for itself and reads back (work plans, claims, done markers, receipts,
snapshot metadata, the precision gate's cache) are inputs like any other: a folder that several
workers, a shared filesystem, a crash or a user's hand can leave in any state may hold them
truncated, forged, nested a hundred thousand levels deep, or as links to elsewhere.

:func:`read_record` is the one reader for them: the file must be a regular file (not a link),
at most ``max_bytes`` long, JSON nested at most :data:`MAX_DEPTH` levels (checked by a linear scan
before the parser, whose recursion a deep file would exhaust), and valid against a strict
pydantic model; anything else raises :class:`OwnFileError`, one line naming the file and the
problem, which the caller turns into "redo it" or "plan it again". Names that recon makes (unit
ids, the files a receipt lists) are plain: :func:`plain_name` and :func:`inside`.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any, Type, TypeVar

from pydantic import BaseModel, ValidationError

from recon.errors import ReconError

MAX_BYTES = 16 << 20        # a plan of 100,000 faces is about 10 MB; every other record is far smaller
MAX_DEPTH = 32              # recon's records nest 5 levels at most

M = TypeVar("M", bound=BaseModel)
PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}")


class OwnFileError(ReconError, ValueError):
    """One of recon's own files is not what recon writes (the message names it and the problem)."""


def plain_name(name: object) -> bool:
    """A name recon made: letters, digits and ``_ . + -``, not starting with a dot, no ``..``, no
    separator; safe to join to a folder."""
    return isinstance(name, str) and bool(PLAIN.fullmatch(name)) and ".." not in name


def inside(relative: object) -> bool:
    """A relative path of plain names (``seed0000/image.png``): it stays in the folder it is joined to."""
    return isinstance(relative, str) and all(plain_name(part) for part in relative.split("/"))


def json_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest in JSON ``text`` (strings skipped), in one linear pass."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def read_json(path, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH, finite: bool = True) -> Any:
    """The JSON value of one of recon's files, bounded (and with ``finite``, no NaN or infinity);
    :class:`OwnFileError` otherwise (a missing file raises ``FileNotFoundError``, which callers
    treat as "not there yet")."""
    path = Path(path)
    if path.is_symlink():
        raise OwnFileError(f"{path}: a link, not a file recon wrote")
    if not path.exists():
        raise FileNotFoundError(path)
    if not path.is_file():
        raise OwnFileError(f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise OwnFileError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise OwnFileError(f"{path}: larger than {max_bytes >> 20} MB, not a file recon wrote")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OwnFileError(f"{path}: not text (not a file recon wrote)") from None
    if json_depth(text) > max_depth:
        raise OwnFileError(f"{path}: nested more than {max_depth} levels deep, not a file recon wrote")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise OwnFileError(f"{path}: not valid JSON ({exc})") from None
    if finite and not _finite(value):
        raise OwnFileError(f"{path}: holds a non-finite number")
    return value


def read_record(path, model: Type[M], max_bytes: int = MAX_BYTES) -> M:
    """One of recon's files as ``model`` (strict: its fields, types and bounds), bounded as
    :func:`read_json` reads; :class:`OwnFileError` naming the file and the first problem."""
    value = read_json(path, max_bytes)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "the whole file"
        raise OwnFileError(f"{path}: {where}: {err['msg'][:200]}") from None


def own_dir(path) -> Path:
    """``path`` as a real directory of its own: a link (to anywhere) or a file in its place is
    removed first, so that what is written there stays in the output folder."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove(path) -> None:
    """Remove ``path`` whatever it is (a link is removed, never what it points to)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
