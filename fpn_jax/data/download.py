"""Files fetched once and cached: checksummed downloads from a list of mirrors (urllib only).

``fetch(files, folder, mirrors)`` brings each missing ``RemoteFile`` into ``folder``: it tries
the mirrors in turn, streams the body into a hidden temporary file in ``folder`` (with a tqdm
progress bar for large files), checks the byte count, the size and the checksums, and only
then renames it (``os.replace``, atomic) to its final name. A dead mirror, an HTTP error, an
interrupted transfer or a checksum mismatch moves on to the next mirror; a corrupt or partial
file never appears under the final name, so a complete-looking cache is a verified one. When
every mirror fails, ``DownloadError`` names each URL tried and why it failed.

The cache lives under ``$FPN_JAX_HOME`` (default ``~/.cache/fpn_jax``): ``data_home()`` is
``$FPN_JAX_HOME/data``, one folder per data set (``data_home() / "mnist"``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from fpn_jax.data.base import DatasetUnavailableError

__all__ = ["DownloadError", "RemoteFile", "data_home", "fetch", "fpn_jax_home", "verify"]

DEFAULT_TIMEOUT = 30.0
"""Seconds a mirror may take to connect or to send the next block before it counts as dead."""
_CHUNK = 1 << 16
_PROGRESS_MIN_BYTES = 1 << 20  # smaller files get no progress bar
_USER_AGENT = f"fpn-jax Python-urllib/{sys.version_info.major}.{sys.version_info.minor}"


class DownloadError(DatasetUnavailableError):
    """No mirror could provide a verified copy of a file; the message lists every attempt.

    Attributes:
      attempts: ``(url, reason)`` for every mirror tried, in order.
    """

    def __init__(self, message: str, attempts: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.attempts = tuple(attempts)


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file as the mirrors serve it, with what a good copy must match.

    A copy is accepted when its size (if given) and every checksum given (``md5``, ``sha256``)
    match. For a gzip file, ``raw_md5`` (with ``raw_size``) describes the decompressed
    content instead: a copy whose gzip wrapper differs (recompressed elsewhere) but whose
    content is the same is accepted too.

    Attributes:
      name: the file name on the mirrors and in the cache, e.g. ``"train-images-idx3-ubyte.gz"``.
      md5: MD5 of the file as served (hex), or None.
      size: its size in bytes, or None.
      sha256: SHA-256 of the file as served (hex), or None.
      raw_md5: MD5 of the gunzipped content (hex), or None.
      raw_size: size of the gunzipped content in bytes, or None.
    """

    name: str
    md5: str | None = None
    size: int | None = None
    sha256: str | None = None
    raw_md5: str | None = None
    raw_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"RemoteFile: `name` must be a plain file name; got {self.name!r}.")
        if self.md5 is None and self.sha256 is None and self.raw_md5 is None:
            raise ValueError(
                f"RemoteFile: {self.name} needs a checksum (`md5`, `sha256` or `raw_md5`); got none."
            )
        for field, length in (("md5", 32), ("sha256", 64), ("raw_md5", 32)):
            value = getattr(self, field)
            if value is not None and (len(value) != length or any(c not in "0123456789abcdef" for c in value)):
                raise ValueError(
                    f"RemoteFile: `{field}` of {self.name} must be {length} lowercase hex digits; got {value!r}."
                )
        for field in ("size", "raw_size"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(
                    f"RemoteFile: `{field}` of {self.name} must be None or an integer >= 0; got {value!r}."
                )


def fpn_jax_home() -> Path:
    """fpn-jax's cache root: ``$FPN_JAX_HOME``, or ``~/.cache/fpn_jax`` when unset or empty."""
    home = os.environ.get("FPN_JAX_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "fpn_jax"


def data_home() -> Path:
    """Where downloaded data sets are kept: ``$FPN_JAX_HOME/data``, one folder per data set."""
    return fpn_jax_home() / "data"


def verify(path: str | os.PathLike, file: RemoteFile) -> str | None:
    """Checks a local copy of ``file``; None if it is good, else what is wrong with it.

    Args:
      path: the local copy.
      file: what a good copy matches (see ``RemoteFile``).

    Returns:
      None for a good copy, else a sentence such as ``"MD5 0123... instead of f68b..."``.
    """
    path = Path(path)
    md5, sha256, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            md5.update(block)
            sha256.update(block)
            size += len(block)
    problems = []
    if file.size is not None and size != file.size:
        problems.append(f"{size} bytes instead of {file.size}")
    if file.md5 is not None and md5.hexdigest() != file.md5:
        problems.append(f"MD5 {md5.hexdigest()} instead of {file.md5}")
    if file.sha256 is not None and sha256.hexdigest() != file.sha256:
        problems.append(f"SHA-256 {sha256.hexdigest()} instead of {file.sha256}")
    if not problems and (file.md5 is not None or file.sha256 is not None):
        return None
    if file.raw_md5 is not None:
        content = _gunzipped_md5(path)
        if content == (file.raw_md5, file.raw_size if file.raw_size is not None else content[1]):
            return None
        if content[0] is None:
            problems.append("not a readable gzip file")
        else:
            expected = f"MD5 {file.raw_md5}" + (f", {file.raw_size} bytes" if file.raw_size is not None else "")
            problems.append(f"its content has MD5 {content[0]}, {content[1]} bytes instead of {expected}")
    return "checksum mismatch: " + "; ".join(problems)


def fetch(
    files: Sequence[RemoteFile],
    folder: str | os.PathLike,
    mirrors: Sequence[str],
    *,
    what: str = "the data",
    advice: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> list[Path]:
    """Downloads every file of ``files`` not yet in ``folder``, verified, trying ``mirrors`` in turn.

    A file already in ``folder`` under its name is kept as it is (only verified files are
    ever written there). Each download goes to a hidden ``.<name>.*.part`` file in
    ``folder``, is checked (bytes received against Content-Length, then ``verify``) and is
    renamed to ``<name>`` only when good; otherwise it is deleted and the next mirror tried.
    Files fetched before a failure stay (they are verified), so a second call resumes with
    the missing ones.

    Args:
      files: the files, each with its checksums.
      folder: where they go (created if missing).
      mirrors: base URLs, tried in order; a file's URL is ``mirror + name`` (a ``/`` is added
        when the mirror lacks one).
      what: the data set's name, for messages (``"MNIST"``).
      advice: appended to the error message (what to do instead).
      timeout: seconds allowed for connecting and for each read.
      progress: show a tqdm progress bar (on stderr, for files of 1 MiB or more, when stderr is
        a terminal) and a line naming each URL downloaded.

    Returns:
      The paths of all ``files`` in ``folder``, in order.

    Raises:
      DownloadError: every mirror failed for some file (the message lists each URL and why),
        or ``folder`` cannot be created.
      ValueError: no mirrors, or a bad ``timeout``.
    """
    mirrors = [mirrors] if isinstance(mirrors, str) else list(mirrors)
    if not mirrors or not all(isinstance(m, str) and m for m in mirrors):
        raise ValueError(f"fetch: `mirrors` must be a non-empty sequence of base URLs; got {mirrors!r}.")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"fetch: `timeout` must be a number of seconds > 0; got {timeout!r}.")
    folder = Path(folder)
    tail = f" {advice}" if advice else ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"Could not download {what}: cannot create the folder {folder} ({err}).{tail}") from None
    paths = []
    for file in files:
        target = folder / file.name
        if not target.is_file():
            attempts = []
            for mirror in mirrors:
                url = mirror if mirror.endswith("/") else mirror + "/"
                url += file.name
                try:
                    _download(url, file, target, timeout=timeout, progress=progress)
                except _MirrorFailed as failure:
                    attempts.append((url, str(failure)))
                    if progress:
                        print(f"fpn_jax: {url} failed: {failure}", file=sys.stderr, flush=True)
                    continue
                break
            else:
                listed = "\n".join(f"  - {url}: {reason}" for url, reason in attempts)
                raise DownloadError(
                    f"Could not download {what}: no mirror gave a good copy of {file.name} (for {folder}). "
                    f"Tried:\n{listed}\n{tail.strip()}".rstrip(),
                    attempts,
                )
        paths.append(target)
    return paths


class _MirrorFailed(Exception):
    """This mirror could not provide a good copy; the message says why."""


def _download(url: str, file: RemoteFile, target: Path, *, timeout: float, progress: bool) -> None:
    """One attempt: ``url`` streamed to a temporary file beside ``target``, verified, renamed."""
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{file.name}.", suffix=".part")
    try:
        try:
            with os.fdopen(descriptor, "wb") as out:
                received, announced = _stream(url, out, file, timeout=timeout, progress=progress)
                out.flush()
                os.fsync(out.fileno())
        except urllib.error.HTTPError as err:
            raise _MirrorFailed(f"HTTP error {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise _MirrorFailed(f"unreachable ({_reason(err.reason)})") from None
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise _MirrorFailed(f"transfer failed ({_reason(err)})") from None
        if announced is not None and received != announced:
            raise _MirrorFailed(f"transfer interrupted: received {received} of the {announced} bytes announced")
        problem = verify(temporary, file)
        if problem is not None:
            raise _MirrorFailed(problem)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _stream(url: str, out: BinaryIO, file: RemoteFile, *, timeout: float, progress: bool) -> tuple[int, int | None]:
    """Writes the body of ``url`` to ``out``; returns the bytes received and the Content-Length."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) mirrors
        length = response.headers.get("Content-Length")
        announced = int(length) if length is not None and length.strip().isdigit() else None
        total = announced if announced is not None else file.size
        quiet = not progress or (total is not None and total < _PROGRESS_MIN_BYTES)
        if progress:
            print(f"fpn_jax: downloading {url}", file=sys.stderr, flush=True)
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=file.name, leave=False,
                  file=sys.stderr, disable=True if quiet else None) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    return received, announced


def _gunzipped_md5(path: Path) -> tuple[str | None, int]:
    """MD5 and size of the gunzipped content of ``path``; (None, 0) if it is not valid gzip."""
    md5, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                md5.update(block)
                size += len(block)
    except (OSError, EOFError, zlib.error):
        return None, 0
    return md5.hexdigest(), size


def _reason(err: object) -> str:
    """A short description of an exception (or of URLError's reason, which may be a string)."""
    if isinstance(err, BaseException):
        text = str(err) or repr(err)
        return f"{type(err).__name__}: {text}"
    return str(err)
