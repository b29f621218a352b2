"""Atomic file writes: the one owner of "a kill leaves the old file or the new one, whole".

Every write goes to a temporary sibling (same folder, so the rename stays on one file system),
is flushed and fsync'ed, renamed over the target with ``os.replace``, and the folder is
fsync'ed so the rename itself survives a power cut. Leftover temporaries of a killed writer
are named ``.NAME.tmp-PID`` (``runfolder.clean_leftovers`` removes them).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """The temporary name next to ``path`` that this process writes before the rename."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def fsync_file(path: str | Path) -> None:
    """fsync a file that was written by someone else (e.g. a library's ``save``), or a folder
    (so that the renames and new entries in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a folder, so that the renames and new entries in it are durable."""
    fsync_file(path)


def replace(tmp: str | Path, path: str | Path) -> None:
    """Rename the complete file ``tmp`` over ``path`` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def write_via(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Atomically create ``path`` with ``write(tmp)``, a function that writes the file ``tmp``."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        fsync_file(tmp)
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Atomically write ``data`` to ``path``."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return write_via(path, write)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path``."""
    return write_bytes(path, text.encode(encoding))


def write_new_file(path: Path, data: bytes | memoryview) -> None:
    """Write and fsync a file that must not exist yet (inside a temporary folder)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the complete folder ``tmp`` to ``path``; what was at ``path`` is removed after."""
    old = None
    if path.exists() or path.is_symlink():
        old = temp_sibling(path, "old")
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def point_link(link: str | Path, target: str | Path) -> None:
    """Make ``link`` a symlink to ``target`` (a sibling), swapped atomically."""
    link, target = Path(link), Path(target)
    tmp = temp_sibling(link)
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    replace(tmp, link)
