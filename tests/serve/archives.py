"""Hostile archives, built in a blink: gzip bombs and archives with very many members
(used by the tests and by benchmarks/bench_upload_limits.py).

Both are valid ``.tar.gz`` files (``tar tzf`` lists them, ``gunzip`` checks their CRC), made
without compressing gigabytes: a deflate stream is reset by a full flush, so the compressed
form of 1 MiB of zeros after one is always the same bytes and can be repeated; the CRC of
the zeros is computed in closed form, as zlib's ``crc32_combine`` does.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib

import numpy as np

MIB = 1024 * 1024
_ZEROS = bytes(MIB)


def _deflate(data: bytes, finish: bool = False) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if finish
                                                         else zlib.Z_FULL_FLUSH)


_ZERO_BLOCK = _deflate(_ZEROS)  # 1 MiB of zeros, self-contained (after a full flush)


def gzip_bomb(members: list[tuple[str, int]]) -> bytes:
    """A ``.tar.gz`` whose members are files of zeros: ``(name, size)`` with sizes in
    whole MiB. Eight 1 GiB members (8 GiB unpacked) make about 8.3 MB."""
    pieces = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"]  # gzip header, no name
    crc, total = 0, 0
    for name, size in members:
        if size % MIB:
            raise ValueError("member sizes are whole MiB")
        info = tarfile.TarInfo(name)
        info.size = size
        header = info.tobuf(tarfile.PAX_FORMAT)
        pieces += [_deflate(header), _ZERO_BLOCK * (size // MIB)]
        crc = crc32_zeros(zlib.crc32(header, crc), size)
        total += len(header) + size
    end = bytes(2 * tarfile.BLOCKSIZE + (-(total + 2 * tarfile.BLOCKSIZE)) % tarfile.RECORDSIZE)
    pieces.append(_deflate(end, finish=True))
    crc = zlib.crc32(end, crc)
    total += len(end)
    pieces.append(crc.to_bytes(4, "little") + (total % 2**32).to_bytes(4, "little"))
    return b"".join(pieces)


def many_members(count: int) -> bytes:
    """A ``.tar.gz`` of ``count`` empty files ``b/f0000000``, ``b/f0000001``, ... (the
    headers are made with numpy: tarfile needs seconds for 300,000 of them)."""
    template = np.frombuffer(tarfile.TarInfo("b/f0000000").tobuf(tarfile.USTAR_FORMAT),
                             dtype=np.uint8)
    heads = np.tile(template, (count, 1))
    numbers = np.arange(count, dtype=np.int64)[:, None]
    heads[:, 3:10] = (numbers // 10 ** np.arange(6, -1, -1)) % 10 + ord("0")
    heads[:, 148:156] = ord(" ")  # the checksum is computed with its own field blank
    sums = heads.sum(axis=1, dtype=np.int64)
    for k in range(6):
        heads[:, 148 + k] = ord("0") + (sums >> (3 * (5 - k))) % 8
    heads[:, 154] = 0
    return gzip.compress(heads.tobytes() + bytes(2 * tarfile.BLOCKSIZE), 1)


def crc32_zeros(crc: int, count: int) -> int:
    """``zlib.crc32(bytes(count), crc)`` without the bytes (zlib's crc32_combine)."""
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = _square(odd)  # two bits
    odd = _square(even)  # four bits
    state = crc ^ 0xFFFFFFFF
    while count:
        even = _square(odd)  # eight bits, then 32, 128, ...: one byte, 4, 16, ...
        if count & 1:
            state = _times(even, state)
        count >>= 1
        if not count:
            break
        odd = _square(even)
        if count & 1:
            state = _times(odd, state)
        count >>= 1
    return state ^ 0xFFFFFFFF


def _times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]
