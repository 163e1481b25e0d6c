"""Reading official data-set archives as one checked stream (shared by the readers).

tarfile's own stream mode (``r|gz``) never checks gzip's CRC-32, so the archive is
decompressed by the module of its format (gzip, bz2, lzma), which verifies the
format's checksum when the stream ends; a reader that reads the stream to its very
end therefore turns a flipped byte into an error instead of a silently different
image.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from pathlib import Path

#: What a damaged, truncated or foreign archive raises while it is streamed.
ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
)


def open_decompressed(path: Path) -> io.BufferedIOBase:
    """The archive's bytes, decompressed by the module that verifies the format's checksum
    when the stream ends (an uncompressed tar is opened as it is)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def read_to_end(stream: io.BufferedIOBase) -> None:
    """Drain ``stream``: the tar ends before the compressor's trailer, which holds the CRC."""
    while stream.read(1 << 20):
        pass
