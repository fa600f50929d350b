"""File helpers for snapshots: hashing, flushing, private files and directory.

A snapshot holds the whole database, so its file is 0600 in a 0700
directory whatever the process umask: modes are set explicitly (chmod),
not left to `mkdir`/`open` and the umask.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from opsapp.services.errors import SnapshotError

CHUNK = 1 << 20
FILE_MODE = 0o600
DIR_MODE = 0o700


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private_file(path: Path) -> int:
    """Create `path` (it must not exist) mode 0600 whatever the umask; return the open write descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_dir(path: Path) -> Path:
    """Create the snapshot directory mode 0700 (tightening an existing one); SnapshotError when that fails."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    except OSError as exc:
        raise SnapshotError(
            f"Snapshot directory {str(path)!r} cannot be created: {exc.strerror or exc}. Check OPS_SNAPSHOT_DIR.",
            reason="directory",
        ) from exc
    try:
        if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
            os.chmod(path, DIR_MODE)
    except OSError as exc:
        raise SnapshotError(
            f"Snapshot directory {str(path)!r} cannot be made private (mode 0700): {exc.strerror or exc}. "
            "Check OPS_SNAPSHOT_DIR.",
            reason="directory",
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise SnapshotError(
            f"Snapshot directory {str(path)!r} is not writable. Check OPS_SNAPSHOT_DIR.", reason="directory"
        )
    return path
