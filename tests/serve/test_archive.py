"""mlaas_dask.archive, the streaming extraction behind uploads: what tarfile would read into
memory or follow without bound is refused before it is read, a corrupt or truncated gzip
stream is refused, a refused archive leaves nothing, archives made by tar -C dir . work."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from mlaas_dask.archive import ArchiveError, ArchiveLimits, ArchiveTooLarge, extract_tar_gz

from .archives import gzip_bomb
from .conftest import tar_bytes


def _tgz(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _file(name: str, data: bytes = b"x", **pax: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.pax_headers = pax
    return info, data


def _chained_long_names(count: int) -> bytes:
    """``count`` GNU long-name headers in front of one file (tarfile follows them by
    recursion)."""
    chain = b""
    for i in range(count):
        name = f"b/{'n' * 120}{i}".encode() + b"\0"
        head = tarfile.TarInfo("././@LongLink")
        head.type, head.size = tarfile.GNUTYPE_LONGNAME, len(name)
        chain += head.tobuf(tarfile.GNU_FORMAT) + name + bytes(-len(name) % 512)
    last = tarfile.TarInfo("b/x")
    last.size = 1
    raw = chain + last.tobuf(tarfile.GNU_FORMAT) + b"x" + bytes(511) + bytes(1024)
    return gzip.compress(raw)


@pytest.mark.parametrize("archive,error,message", [
    (_tgz([_file("b/x", comment="c" * 100_000)]), ArchiveError,
     "an extended \\(pax or long-name\\) header of 100\\d\\d\\d bytes; at most 65536"),
    (_chained_long_names(6), ArchiveError, "more than 4 extended .* headers in a row"),
    (_tgz([_file("b/" + "n" * 200)]), ArchiveError, "longer than 128 characters"),
    (_tgz([_file("b/x"), _file("c/x")]), ArchiveError, "file 'x' appears twice"),
    (gzip_bomb([("b/big", 64 * 1024 * 1024)]), ArchiveTooLarge,
     "member 'b/big' unpacks to 67108864 bytes; at most 1048576 bytes per file"),
])
def test_hostile_headers_are_refused_before_they_are_read(tmp_path: Path, archive: bytes,
                                                          error: type, message: str):
    limits = ArchiveLimits(members=64, member_bytes=1024 * 1024, unpacked_bytes=8 * 1024**2)
    with pytest.raises(error, match=message):
        extract_tar_gz(archive, tmp_path / "x", "upload", limits)
    assert not (tmp_path / "x").exists()


def test_sparse_members_are_refused(tmp_path: Path):
    info = tarfile.TarInfo("b/sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info)
    with pytest.raises(ArchiveError, match="member 'b/sparse' is a sparse file"):
        extract_tar_gz(buffer.getvalue(), tmp_path / "x")


def test_corrupt_or_truncated_gzip_is_refused(tmp_path: Path):
    good = tar_bytes({"b/a": b"hello" * 1000, "b/c": b"x"})
    bad_crc = bytearray(good)
    bad_crc[-6] ^= 0xFF  # the CRC in the gzip trailer
    for archive, message in ((bytes(bad_crc), "checksum"), (good[:-4], "truncated"),
                             (good[: len(good) // 2], "not a readable .tar.gz archive")):
        with pytest.raises(ArchiveError, match=message):
            extract_tar_gz(archive, tmp_path / "x")
        assert not (tmp_path / "x").exists()
    assert extract_tar_gz(good, tmp_path / "x") == ["a", "c"]


def test_a_refused_archive_leaves_only_what_was_there(tmp_path: Path):
    target = tmp_path / "existing"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    archive = _tgz([_file("b/a"), _file("b/c"), _file("/etc/evil")])
    with pytest.raises(ArchiveError, match="absolute or parent path"):
        extract_tar_gz(archive, target)
    assert sorted(p.name for p in target.iterdir()) == ["mine.txt"]


def test_archives_of_a_folder_dot_and_from_a_file(tmp_path: Path):
    """``tar czf b.tar.gz -C bundle .`` makes './' and './file' members; a file object
    works as a source too."""
    folder = tarfile.TarInfo("./")
    folder.type = tarfile.DIRTYPE
    archive = _tgz([(folder, b""), _file("./model.ubj", b"m"), _file("./features.json", b"{}")])
    path = tmp_path / "b.tar.gz"
    path.write_bytes(archive)
    with open(path, "rb") as handle:
        assert extract_tar_gz(handle, tmp_path / "x") == ["features.json", "model.ubj"]
    assert (tmp_path / "x" / "model.ubj").read_bytes() == b"m"
