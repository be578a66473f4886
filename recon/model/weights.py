"""Obtain pretrained files: official URLs, local paths or ``file://`` URLs; resumable, verified.

A local file is used where it is (never copied); a download goes to one cache per user
(:func:`cache_dir`: ``$RECON_CACHE_DIR``, else ``$XDG_CACHE_HOME/recon``, else ``~/.cache/recon``),
shared by every checkout and experiment on the machine, so a second checkout or a queued
experiment never downloads it again.

NVIDIA publishes no checksums, so none is hard-coded: each file takes an optional sha256. When it
is given, a mismatch is refused (a bad download is removed; a local file is left alone); when it
is empty, the digest computed here is returned so the caller can record it.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from recon.errors import DownloadError, DownloadInterrupted

OFFICIAL_URLS = {
    "ffhq": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl",
    "ngc-ffhq-1024": "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
                     "stylegan2-ffhq-1024x1024.pkl",
    "ngc-ffhq-512": "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
                    "stylegan2-ffhq-512x512.pkl",
    "ngc-ffhq-256": "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/"
                    "stylegan2-ffhq-256x256.pkl",
    "vgg16": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt",
}
CHUNK = 1 << 20


def sha256_of(path, chunk: int = CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def resolve_source(source: str) -> str:
    """A name from OFFICIAL_URLS, an http(s)/file URL, or a local path."""
    return OFFICIAL_URLS.get(source, source)


def _local_path(source: str) -> Optional[Path]:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(source)
    return None


def cache_dir() -> Path:
    """recon's per-user cache: ``$RECON_CACHE_DIR``, else ``$XDG_CACHE_HOME/recon``, else ``~/.cache/recon``."""
    if os.environ.get("RECON_CACHE_DIR"):
        return Path(os.environ["RECON_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recon"


def download_path(url: str) -> Path:
    """Where a download of ``url`` is kept: ``<cache_dir>/downloads/<file name>``."""
    return cache_dir() / "downloads" / Path(urllib.parse.urlparse(url).path).name


def _verify(path: Path, sha256: str, source: str, remove: bool = True) -> str:
    digest = sha256_of(path)
    if sha256 and digest.lower() != sha256.strip().lower():
        if remove:
            path.unlink(missing_ok=True)
        raise DownloadError(f"{source}: sha256 mismatch (expected {sha256}, got {digest})"
                            + ("; the bad file was removed" if remove else ""))
    return digest


def obtain(source: str, sha256: str = "", hint: str = "", progress: bool = True, **fetch_kwargs):
    """``(path, sha256)`` of a verified copy of ``source`` on this machine: a local path or
    ``file://`` URL is used where it is; an ``http(s)://`` URL (or an official name) is
    downloaded once into :func:`download_path` (:func:`fetch`). ``hint`` names the params key."""
    url = resolve_source(source)
    local = _local_path(url)
    if local is not None:
        if not local.is_file():
            raise DownloadError(f"{url}: no such file" + (f" ({hint})" if hint else ""))
        return local, _verify(local, sha256, url, remove=False)
    dest = download_path(url)
    return dest, fetch(url, dest, sha256, progress=progress, hint=hint, **fetch_kwargs)


def store_path(digest: str, suffix: str) -> Path:
    """Where the weights file of sha256 ``digest`` lives: ``<cache_dir>/weights/<digest><suffix>``."""
    return cache_dir() / "weights" / f"{digest}{suffix}"


def store(path: Path, digest: str, suffix: str) -> Path:
    """Put the file ``path`` (of sha256 ``digest``) into the content-addressed store, as a hard
    link where the filesystem allows (the file is then on disk once), else a copy."""
    dest = store_path(digest, suffix)
    if not (dest.is_file() and sha256_of(dest) == digest):       # absent, or damaged since
        dest.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(path, dest)
    return dest


RECORD = "weights.json"


@dataclass(frozen=True)
class WeightFiles:
    """The two networks a run needs, and a digest of both for fingerprints."""
    generator: Path
    vgg16: Path
    digest: str


def resolve_weights(weights) -> WeightFiles:
    """The weights a stage runs with: ``weights`` is the download_weights folder (its
    ``weights.json`` names them by sha256 in the store, and each is verified against it) or a
    ``(generator, vgg16)`` pair of paths, as the command line gives them."""
    from recon.errors import MissingInputError

    if isinstance(weights, (tuple, list)):
        generator, vgg16 = Path(weights[0]), Path(weights[1])
        for p in (generator, vgg16):
            if not p.is_file():
                raise MissingInputError(f"{p}: no such file")
        return WeightFiles(generator, vgg16, sha256_of(generator) + sha256_of(vgg16))
    record_path = Path(weights) / RECORD
    from recon.data.ownfiles import read_json
    try:       # recon's own file read back: bounded, and digests that are digests
        record = read_json(record_path, max_bytes=1 << 20)
        digests = record["generator"]["converted_sha256"], record["vgg16"]["sha256"]
        if not all(isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d) for d in digests):
            raise ValueError("a sha256 that is not one")
    except FileNotFoundError:
        raise MissingInputError(f"{record_path}: missing (run the download_weights stage first)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise MissingInputError(f"{record_path}: unreadable ({type(exc).__name__}: {exc}); "
                                "run `dvc repro -f download_weights`") from None
    paths = store_path(digests[0], ".safetensors"), store_path(digests[1], ".pt")
    for p, d in zip(paths, digests):
        problem = "missing" if not p.is_file() else ("damaged (its sha256 differs)" if sha256_of(p) != d else "")
        if problem:
            raise MissingInputError(f"{p}: {problem}; it is the file {record_path} records: run "
                                    "`dvc repro -f download_weights` to obtain it again")
    return WeightFiles(paths[0], paths[1], digests[0] + digests[1])


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (a hard link: one copy on disk), or a copy where links
    cannot be made (another filesystem); atomic."""
    tmp = Path(dst).with_name(f".{Path(dst).name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class _Interrupted(Exception):
    """A transfer that started and then stopped (connection lost, or fewer bytes than announced)."""


def fetch(url: str, dest, sha256: str = "", progress: bool = True, timeout: float = 30.0,
          hint: str = "", retries: int = 3, backoff: float = 1.0) -> str:
    """Make ``dest`` a verified download of the ``http(s)://`` ``url``; returns its sha256.

    An existing ``dest`` is verified and kept, so a file copied there by hand is used. The
    download goes to ``dest.part``: a transfer that stops early (a dropped connection, or fewer
    bytes than its Content-Length) is retried ``retries`` times with exponential ``backoff``,
    each time resuming with a Range request (from the start when the server ignores Range); if
    it still fails, the ``.part`` file stays for the next run to resume. Only a complete file is
    verified and moved into place. ``hint`` names the params.yaml key, for the offline message.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():  # already fetched: verify, don't refetch
        return _verify(dest, sha256, str(dest))
    for attempt in range(retries + 1):
        try:
            _download(url, part, dest, timeout, progress, hint)
            break
        except _Interrupted as exc:
            have = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadInterrupted(f"{url}: download interrupted {attempt + 1} times ({exc}); {part} keeps "
                                          f"the {have} bytes received: run again to resume") from None
            time.sleep(backoff * 2 ** attempt)
    digest = _verify(part, sha256, url)
    os.replace(part, dest)
    return digest


def _download(url: str, part: Path, dest: Path, timeout: float, progress: bool, hint: str) -> None:
    """One HTTP transfer into ``part``, resumed from its current size; raises :class:`_Interrupted`
    when it ends before the announced length."""
    from tqdm import tqdm

    done = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "recon"})
    if done:
        req.add_header("Range", f"bytes={done}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # nothing past the end: the partial file is complete
            return
        raise DownloadError(_offline_message(url, dest, hint, f"HTTP {exc.code} {exc.reason}")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(_offline_message(url, dest, hint, str(reason))) from None

    with resp:
        resumed = bool(done) and resp.status == 206
        if not resumed:
            done = 0  # the server sent the whole file: start over
        length = resp.headers.get("Content-Length")
        total = int(length) + done if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=done, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
            try:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                raise _Interrupted(f"{type(exc).__name__}: {exc}") from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise _Interrupted(f"ended after {got} of {total} bytes")


def _offline_message(url: str, dest: Path, hint: str, reason: str) -> str:
    from recon.config import params_key
    where = params_key(hint) if hint else "the source"
    return (f"could not download {url} ({reason}): if this machine is offline, download it elsewhere and copy it "
            f"to {dest}, or set {where} to a local path or a file:// URL")
