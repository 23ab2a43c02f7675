"""Writing files so that a reader never sees half of one: a temporary file in the same folder, renamed over
the target (atomic on POSIX). The one way sftlab writes a whole file; rows are appended through sftlab.jsonl.

    atomic_write_text(path, text)       # UTF-8 text
    atomic_write_bytes(path, data)
    write_if_changed(path, data)        # nothing written when the file holds it already
    atomic_copy(source, path)           # a rendered report copied into reports/

The file gets the mode `open()` would give it (FILE_MODE, from the umask): mkstemp's 0600 would hide
reports and params from other readers of a shared outputs folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's 0600 would hide reports from other readers


def atomic_write_bytes(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def write_if_changed(target: Path, data: bytes) -> bool:
    """Write `data` (atomically) unless `target` already holds exactly it; True when written. A stage whose
    inputs did not change rewrites nothing, so a second run leaves every file (and its time) as it was."""
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(target, data)
    return True


def atomic_copy(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
