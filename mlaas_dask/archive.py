"""Unpacking ``.tar.gz`` archives received from elsewhere (bundle uploads), safely and
within limits.

The archive is read as a stream: decompressed piece by piece as its bytes arrive (from
bytes, a file, or a request body still being received), one member after the other, and
refused at the first member that breaks a rule, before the rest is decompressed or even
received. Nothing needs the whole archive in memory.

Rules:

- only regular files, at the top level or inside one folder (directories are skipped);
  absolute paths, ``..``, links, devices and sparse files are refused;
- at most ``members`` members, each at most ``member_bytes`` and all together at most
  ``unpacked_bytes``: sizes are checked from each member's header, before its data is read;
- the decompressed stream itself (headers and padding included) is capped, and pax / GNU
  long-name headers must be small and few, so no part of an archive makes the reader
  decompress, hold or write more than the limits allow (a gzip bomb stops at its first
  oversized member, or once the stream passes the cap).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from isal import isal_zlib

from mlaas_dask.errors import BundleError

#: default limits: members (files and folders), bytes in all, bytes per file (the same:
#: a bundle is mostly its model file)
MAX_MEMBERS = 64
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_MEMBER_BYTES = MAX_UNPACKED_BYTES
#: largest pax or GNU long-name header, and most such headers in front of one member
MAX_EXTENDED_BYTES = 64 * 1024
MAX_EXTENDED_CHAIN = 4
#: longest file name in an archive
MAX_NAME_LENGTH = 128

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar pads the archive to a whole record
_CHUNK = 64 * 1024  # compressed bytes read at a time
_COPY_CHUNK = 1024 * 1024
_STREAM_BUFFER = 256 * 1024  # decompressed bytes tarfile asks for at a time
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)

Source = bytes | bytearray | memoryview | BinaryIO | Callable[[int], bytes]


class ArchiveError(BundleError):
    """An archive that is unreadable or breaks a safety rule."""


class ArchiveTooLarge(ArchiveError):
    """An archive over one of the limits (too many members, or too many bytes)."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may hold.

    Parameters
    ----------
    members
        Members (files and folders).
    member_bytes
        Unpacked bytes of one file.
    unpacked_bytes
        Unpacked bytes of all files together.
    """

    members: int = MAX_MEMBERS
    member_bytes: int = MAX_MEMBER_BYTES
    unpacked_bytes: int = MAX_UNPACKED_BYTES

    @property
    def stream_bytes(self) -> int:
        """Most decompressed bytes an archive within the limits can have: the files padded
        to blocks, each member's headers, the end marker and the record padding."""
        headers = _BLOCK + MAX_EXTENDED_CHAIN * (_BLOCK + MAX_EXTENDED_BYTES)
        return self.unpacked_bytes + (self.members + 1) * (headers + _BLOCK) + 2 * _RECORD


def extract_tar_gz(source: Source, target: Path, name: str = "archive",
                   limits: ArchiveLimits | None = None) -> list[str]:
    """Unpack the ``.tar.gz`` read from ``source`` into ``target``, all files side by side.

    Parameters
    ----------
    source
        The archive: bytes, a binary file, or a ``read(n)`` function returning at most
        ``n`` bytes (``b""`` at the end), e.g. over a request body being received.
    target
        Folder that receives the files (created if missing).
    name
        How messages name the archive.
    limits
        What the archive may hold (:class:`ArchiveLimits` defaults).

    Returns
    -------
    list[str]
        The names of the files written, sorted.

    Raises
    ------
    ArchiveTooLarge
        At the first member over a limit (count, one file's size, or the total).
    ArchiveError
        For an unreadable archive or a member that breaks a rule, with the member named.
    """
    limits = limits or ArchiveLimits()
    stream = _Gunzip(_read_function(source), limits.stream_bytes, name)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_Header,  # type: ignore[call-overload]
                          bufsize=_STREAM_BUFFER) as tar:
            _extract_members(tar, target, name, limits, written)
        stream.finish()
    except BaseException as err:
        _remove(target, written, created)  # nothing of a refused archive stays
        if isinstance(err, _Refused):
            raise ArchiveError(f"{name}: {err}") from None
        # isal's stub declares its error an instance, not a class
        if isinstance(err, (tarfile.TarError, EOFError, zlib.error,
                            isal_zlib.error)):  # type: ignore[arg-type]
            raise ArchiveError(f"{name} is not a readable .tar.gz archive: {err}") from None
        raise
    return sorted(written)


def _remove(target: Path, written: set[str], created: bool) -> None:
    for base in written:
        (target / base).unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            target.rmdir()


def _extract_members(tar: tarfile.TarFile, target: Path, name: str,
                     limits: ArchiveLimits, written: set[str]) -> None:
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > limits.members:
            raise ArchiveTooLarge(
                f"{name} has more than {limits.members} members (the limit): at most "
                f"{limits.members} allowed. A bundle holds a handful of files."
            )
        base = _file_name(member, name)
        if base is None:
            continue
        if member.size > limits.member_bytes:
            raise ArchiveTooLarge(
                f"{name}: member {member.name!r} unpacks to {member.size} bytes; at most "
                f"{limits.member_bytes} bytes per file are allowed (the per-file limit)."
            )
        total += member.size
        if total > limits.unpacked_bytes:
            raise ArchiveTooLarge(
                f"{name} unpacks to more than {limits.unpacked_bytes} bytes (the limit on "
                f"all files together), reached at member {member.name!r}."
            )
        if base in written:
            raise ArchiveError(f"{name}: file {base!r} appears twice.")
        source = tar.extractfile(member)
        assert source is not None  # a regular file
        with open(target / base, "xb") as out:
            written.add(base)
            shutil.copyfileobj(source, out, _COPY_CHUNK)


def _file_name(member: tarfile.TarInfo, name: str) -> str | None:
    """The file name to write ``member`` under, ``None`` for a folder, or an error."""
    parts = PurePosixPath(member.name).parts
    if member.name.startswith("/") or ".." in parts:
        raise ArchiveError(
            f"{name}: member {member.name!r} has an absolute or parent path; a bundle "
            "archive holds only files inside the bundle folder."
        )
    if member.isdir():
        return None
    if member.type not in _REGULAR or member.sparse is not None:
        raise ArchiveError(
            f"{name}: member {member.name!r} is not a regular file (links, devices and "
            "sparse files are refused)."
        )
    if not parts:
        raise ArchiveError(f"{name}: a member has an empty name.")
    if len(parts[-1]) > MAX_NAME_LENGTH or not parts[-1].isprintable():
        raise ArchiveError(
            f"{name}: member {member.name[:80]!r} has a file name that is longer than "
            f"{MAX_NAME_LENGTH} characters or not printable."
        )
    if len(parts) > 2:
        raise ArchiveError(
            f"{name}: member {member.name!r} is nested too deep; expected '<bundle>/<file>'."
        )
    return parts[-1]


def _read_function(source: Source) -> Callable[[int], bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source).read
    if callable(source):
        return source
    return source.read


class _Refused(Exception):
    """A header tarfile must not process (the archive's name is added by the caller)."""


class _Header(tarfile.TarInfo):
    """TarInfo that refuses, before tarfile reads them, extended headers that are large or
    chained (tarfile reads their data into memory and follows chains by recursion) and
    sparse members (whose maps can be of any length)."""

    def _proc_member(self, tar: Any) -> Any:  # tarfile's dispatch on the header type
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refused(f"member {self.name!r} is a sparse file, which is refused.")
        if self.type not in _EXTENDED:
            return super()._proc_member(tar)  # type: ignore[misc]  # private, not in typeshed
        if self.size > MAX_EXTENDED_BYTES:
            raise _Refused(f"an extended (pax or long-name) header of {self.size} bytes; at "
                           f"most {MAX_EXTENDED_BYTES} are allowed.")
        depth = getattr(tar, "_mlaas_chain", 0)
        if depth >= MAX_EXTENDED_CHAIN:
            raise _Refused(f"more than {MAX_EXTENDED_CHAIN} extended (pax or long-name) "
                           "headers in a row.")
        tar._mlaas_chain = depth + 1
        try:
            return super()._proc_member(tar)  # type: ignore[misc]
        finally:
            tar._mlaas_chain = depth

    def _proc_gnusparse_10(self, next: Any, pax_headers: Any, tar: Any) -> None:  # noqa: A002
        raise _Refused("a sparse file (GNU sparse 1.0 pax header), which is refused.")


class _Gunzip:
    """The decompressed bytes of a gzip stream, as a file tarfile reads; more than
    ``limit`` bytes in all is :class:`ArchiveTooLarge`."""

    def __init__(self, read: Callable[[int], bytes], limit: int, name: str) -> None:
        self._read = read
        self._limit = limit
        self._name = name
        # gzip framing; ISA-L inflates 5-7x faster than zlib, the same bytes
        self._inflate = isal_zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        size = _CHUNK if size is None or size < 0 else size
        pieces: list[bytes] = []
        got = 0
        while got < size and not self._inflate.eof:
            if not self._pending:
                self._pending = self._read(_CHUNK)
                if not self._pending:
                    break  # truncated: tarfile reports the short read
            piece = self._inflate.decompress(self._pending, size - got)
            self._pending = self._inflate.unconsumed_tail
            self.total += len(piece)
            if self.total > self._limit:
                raise ArchiveTooLarge(
                    f"{self._name} unpacks to more than {self._limit} bytes (the limit on the "
                    "whole decompressed archive)."
                )
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def finish(self) -> None:
        """Read to the end of the gzip stream (the padding after the tar end, then the
        trailer), so that its checksum is verified."""
        while self.read(_CHUNK):
            pass
        if not self._inflate.eof:
            raise ArchiveError(f"{self._name} is not a readable .tar.gz archive: it ends "
                               "before its gzip stream does (truncated?).")

    def close(self) -> None:
        pass
