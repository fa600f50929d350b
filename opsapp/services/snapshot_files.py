"""File helpers for snapshots: hashing, flushing, directory creation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from opsapp.services.errors import SnapshotError

CHUNK = 1 << 20


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


def ensure_dir(path: Path) -> Path:
    """Create the snapshot directory; SnapshotError when it cannot be created or written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SnapshotError(
            f"Snapshot directory {str(path)!r} cannot be created: {exc.strerror or exc}. Check OPS_SNAPSHOT_DIR.",
            reason="directory",
        ) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise SnapshotError(
            f"Snapshot directory {str(path)!r} is not writable. Check OPS_SNAPSHOT_DIR.", reason="directory"
        )
    return path
