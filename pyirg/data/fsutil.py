"""Atomic file and directory output.

Every output of this project (LMDBs, mean files, snapshots, metrics, plots) is
written under a temporary name beside its final path and renamed into place at
the end, so an interrupted or failed run never leaves a half-written file that
a later run (or Caffe) would take for a complete one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: Path) -> None:
    """Flush ``path`` to disk, so a rename after it cannot expose a truncated file."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it becomes ``path``.

    On any exception (including KeyboardInterrupt) the temporary directory is
    removed and ``path`` is left as it was.  An existing non-empty ``path`` is an
    error unless ``overwrite``; it is then swapped out and removed only after the
    new directory is in place.
    """
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final}: exists and is not a directory")
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise FileExistsError(f"{final}: exists and is not empty (use --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename
    try:
        yield tmp
        if final.is_dir() and any(final.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old)  # replaces the empty placeholder directory
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)  # an empty directory may be replaced on POSIX
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def regular_file(
    path: str | os.PathLike[str], what: str, error: type[ValueError] = ValueError
) -> Path:
    """``path`` as a Path if it is a regular file; else ``error`` naming it and ``what``.

    Reading a FIFO would block forever and a device would stream without end, so only
    regular files are opened as inputs.
    """
    p = Path(path)
    if not p.exists():
        raise error(f"{what} {p}: no such file")
    if p.is_dir():
        raise error(f"{what} {p}: is a directory, not a file")
    if not p.is_file():
        raise error(f"{what} {p}: is not a regular file (a FIFO or a device?)")
    return p
