"""Where the raw files of a dataset come from: data directory, cache or download.

A file ``<dataset>/<file>`` is looked up, in order, in the data directory (laid out
like the shared raw-UCI folder), in the cache (``FLOWSWEEP_CACHE_DIR``, else pooch's
OS cache for ``flowsweep``), and is otherwise downloaded from its UCI address into the
cache. A download enters the cache only after its sha256 matched; files found on disk
are checked by the caller after parsing (:func:`sha256_hex`), so that a corrupted file
is reported with the most specific message.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import pooch

from flowsweep.files import write_atomic

__all__ = ["DataError", "Located", "DOWNLOAD_TIMEOUT_S", "cache_dir", "locate", "read_file", "sha256_hex"]

#: Seconds to wait for the server to connect or send data; a failing download should
#: say so quickly rather than hang a sweep.
DOWNLOAD_TIMEOUT_S: float = 5.0


class DataError(Exception):
    """A dataset cannot be loaded; the message names the file (or key) and what to do."""


@dataclass(frozen=True)
class Located:
    """A raw file on disk and whether its sha256 was already checked (fresh download)."""

    path: Path
    verified: bool
    #: ``"data_dir"``, ``"cache"`` or ``"download"``: used to word repair hints.
    origin: str


def cache_dir() -> Path:
    """The cache root: ``FLOWSWEEP_CACHE_DIR`` if set, else pooch's OS cache."""
    env = os.environ.get("FLOWSWEEP_CACHE_DIR")
    return Path(env).expanduser() if env else Path(pooch.os_cache("flowsweep"))


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def expected_hash(spec: Mapping[str, Any]) -> Optional[str]:
    """The file's known sha256 as lowercase hex (a ``sha256:`` prefix is allowed)."""
    value = spec.get("sha256")
    if not value:
        return None
    return str(value).lower().removeprefix("sha256:")


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but a path that cannot even be looked at is an error, not a miss."""
    try:
        return path.is_file()
    except OSError as err:
        raise DataError(f"{path}: cannot access it ({err.strerror or err}); check the permissions of its folders.") from None


def read_file(path: Path) -> bytes:
    """The bytes of ``path``; an unreadable file is a :class:`DataError` naming it."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err}); check its permissions.") from None


def locate(dataset: str, files: Mapping[str, Mapping[str, Any]], data_dir: Optional[str]) -> dict[str, Located]:
    """Find every file of ``files`` (name -> spec), downloading missing ones into the cache.

    Raises :class:`DataError` naming the file, where it was looked for and where to
    put it when a file is nowhere and cannot be downloaded.
    """
    cache = cache_dir() / dataset
    roots = [(Path(data_dir).expanduser() / dataset, "data_dir")] if data_dir else []
    roots.append((cache, "cache"))
    found: dict[str, Located] = {}
    missing_by_url: dict[str, list[str]] = {}
    for fname, spec in files.items():
        hit = next(((root / fname, origin) for root, origin in roots if _is_file(root / fname)), None)
        if hit is not None:
            found[fname] = Located(hit[0], verified=False, origin=hit[1])
        else:
            missing_by_url.setdefault(str(spec.get("url") or ""), []).append(fname)
    # One archive download serves all of its members (turbine: five CSVs in one zip).
    for url, names in missing_by_url.items():
        try:
            if not url:
                raise _DownloadFailed("no download address is configured")
            if any(files[n].get("member") for n in names):
                _fetch_archive(url, {n: files[n] for n in names}, cache)
            else:
                for n in names:
                    _fetch_file(url, n, files[n], cache)
        except _DownloadFailed as err:
            raise DataError(_missing_message(dataset, names, url, str(err), data_dir, cache)) from None
        found.update({n: Located(cache / n, verified=True, origin="download") for n in names})
    return {fname: found[fname] for fname in files}


class _DownloadFailed(Exception):
    """The network part failed; the caller turns it into a 'not found' DataError."""


def _downloader() -> pooch.HTTPDownloader:
    return pooch.HTTPDownloader(progressbar=False, timeout=DOWNLOAD_TIMEOUT_S)


def _reason(err: BaseException) -> str:
    # requests wraps the useful part ("Connection refused") two levels deep.
    inner = getattr(err.args[0], "reason", None) if err.args else None
    text = f"{type(err).__name__}: {inner if inner is not None else err}"
    return text if len(text) <= 300 else text[:297] + "..."


def _fetch_file(url: str, fname: str, spec: Mapping[str, Any], cache: Path) -> None:
    import requests  # pooch's own dependency; imported late as pooch does

    expected = expected_hash(spec)
    try:
        # pooch streams into a temporary file and moves it into place only when the
        # hash matches, so a bad download never reaches the cache.
        pooch.retrieve(
            url,
            known_hash=f"sha256:{expected}" if expected else None,
            fname=fname,
            path=cache,
            downloader=_downloader(),
            progressbar=False,
        )
    except ValueError as err:  # pooch's hash mismatch
        raise DataError(
            f"{fname}: the file downloaded from {url} has the wrong sha256 (expected {expected}); "
            f"nothing was cached. {err} Download it by hand and put it at {cache / fname}, or "
            f"into <data_dir>/{cache.name}/ with FLOWSWEEP_DATA_DIR set."
        ) from None
    except (requests.RequestException, OSError) as err:
        raise _DownloadFailed(_reason(err)) from None


def _fetch_archive(url: str, wanted: Mapping[str, Mapping[str, Any]], cache: Path) -> None:
    import requests

    with tempfile.TemporaryDirectory(prefix="flowsweep-") as tmp:
        try:
            # The archive's own hash is unknown; its members are verified instead.
            archive = pooch.retrieve(
                url, known_hash=None, fname="archive.zip", path=tmp, downloader=_downloader(), progressbar=False
            )
        except (requests.RequestException, OSError) as err:
            raise _DownloadFailed(_reason(err)) from None
        try:
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.namelist() if not m.endswith("/")]
                blobs = {fname: _read_member(zf, members, url, fname, spec) for fname, spec in wanted.items()}
        except zipfile.BadZipFile as err:
            raise DataError(f"{url} is not a valid zip archive ({err}); {', '.join(wanted)} were not cached.") from None
    # Verify every member before caching any, so a bad archive leaves the cache unchanged.
    for fname, data in blobs.items():
        expected = expected_hash(wanted[fname])
        actual = sha256_hex(data)
        if expected and actual != expected:
            raise DataError(
                f"{fname} extracted from {url} has sha256 {actual}, expected {expected}; nothing was "
                f"cached. Put the original file at {cache / fname}, or into <data_dir>/{cache.name}/."
            )
    cache.mkdir(parents=True, exist_ok=True)
    for fname, data in blobs.items():
        write_atomic(cache / fname, data)


def _read_member(zf: zipfile.ZipFile, members: list[str], url: str, fname: str, spec: Mapping[str, Any]) -> bytes:
    member = str(spec.get("member") or fname)
    # Archives are sometimes re-packed with a top folder; accept the member by base name.
    name = member if member in members else next((m for m in members if PurePosixPath(m).name == member), None)
    if name is None:
        raise DataError(f"{fname}: the archive {url} holds no member {member!r} (it holds {members}).")
    return zf.read(name)


def _missing_message(dataset: str, names: list[str], url: str, reason: str, data_dir: Optional[str], cache: Path) -> str:
    attempt = f"downloading {url} failed ({reason})" if url else reason
    what = ", ".join(names)
    # Name the exact target for one file, the folder for several (an archive's members).
    put = (lambda folder: folder / names[0]) if len(names) == 1 else (lambda folder: f"{folder}/ ({what})")
    if data_dir:
        where = Path(data_dir).expanduser() / dataset
        return (
            f"{what} not found in {where}/ nor in the cache {cache}/, and {attempt}. "
            f"Put the file{'s' if len(names) > 1 else ''} at {put(where)}, or set FLOWSWEEP_DATA_DIR "
            f"to a folder holding {dataset}/{names[0]}."
        )
    return (
        f"{what} not found: no data directory is set (data_dir / FLOWSWEEP_DATA_DIR), not in the "
        f"cache {cache}/, and {attempt}. Put the file{'s' if len(names) > 1 else ''} at {put(cache)}, "
        f"or at <dir>/{dataset}/{names[0]} and set FLOWSWEEP_DATA_DIR=<dir>."
    )
