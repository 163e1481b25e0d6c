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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyirg.data.core import DataError

#: What a damaged, truncated or foreign archive raises while it is streamed.
ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
)

#: How a member that is not a regular file is named in messages, by tar type.
MEMBER_KINDS = {
    tarfile.DIRTYPE: "a directory",
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CHRTYPE: "a device",
    tarfile.BLKTYPE: "a device",
}


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


@contextmanager
def tar_stream(path: Path) -> Iterator[tarfile.TarFile]:
    """The archive at ``path`` as a tar to iterate once, member by member; after the body
    the stream is read to its end (so its checksum is checked), and every archive error,
    in the body too, becomes one :class:`DataError` naming ``path``."""
    try:
        with open_decompressed(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar
            while stream.read(1 << 20):  # the tar ends before the trailer, which holds the CRC
                pass
    except DataError:
        raise
    except ARCHIVE_ERRORS as e:
        raise DataError(f"{path}: not a readable (complete) tar archive: {e}") from e


def member_data(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The bytes of a regular-file member."""
    reader = tar.extractfile(member)
    assert reader is not None  # isfile() members always have data
    return reader.read()
