"""Restoring a snapshot into a new, empty database, and checking it (docs/restore.md).

Never into a configured target: a target is recognised by its URL and, for
PostgreSQL, by the server's identity (`system_identifier` and database name).
`restore_snapshot` takes the URL (the command's `--into`, run in process);
`restore_to_destination` takes the name of a restore destination
(opsapp.destinations) and reads its URL here, so a queued restore carries no
URL and no password through the queue. Every attempt is audited
(SNAPSHOT_RESTORED, with the outcome).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from opsapp.models import AuditAction, AuditOutcome, Snapshot, SnapshotStatus
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event
from opsapp.services.db_url import parse_url as make_url
from opsapp.services.errors import OpsError, SnapshotError
from opsapp.services.snapshots import postgres as snapshot_pg
from opsapp.services.snapshots import sqlite as snapshot_sqlite
from opsapp.services.snapshots.lifecycle import (
    PG_CUSTOM,
    snapshot_file_missing,
    snapshot_file_problem,
    snapshot_path,
)
from opsapp.services.snapshots.postgres import RestoreProgress
from opsapp.targets import all_targets, mask_url

RESTORE_REFUSALS = (
    "not_found",
    "not_restorable",
    "file_problem",
    "wrong_kind",
    "is_target",
    "not_empty",
    "bad_url",
    "unreachable",
    "no_destination",
    "bad_destination",
)


def same_database(a: str, b: str) -> bool:
    """True when two URLs name the same database (scheme spelling and default host/port ignored)."""
    try:
        ua, ub = make_url(a), make_url(b)
    except Exception:  # noqa: BLE001
        return False
    # "postgres://" and "postgresql+psycopg://" name the same server.
    backend_a, backend_b = (
        "postgresql" if u.get_backend_name() == "postgres" else u.get_backend_name() for u in (ua, ub)
    )
    if backend_a != backend_b:
        return False
    if backend_a == "sqlite":
        return bool(ua.database and ub.database) and Path(ua.database).resolve() == Path(ub.database).resolve()
    return (ua.host or "localhost", ua.port or 5432, ua.database) == (
        ub.host or "localhost",
        ub.port or 5432,
        ub.database,
    )


def configured_target_at(into_url: str, *, postgresql: bool) -> str | None:
    """The name of the configured target whose database `into_url` is, or None.

    The same URL (any spelling of the scheme) is recognised without
    connecting. For PostgreSQL the server is also asked who it is: the
    cluster's `system_identifier` and the database name, so `localhost` and
    `127.0.0.1` (or any other name of the same server) are the same target.
    """
    into_identity = snapshot_pg.server_identity(into_url) if postgresql else None
    for config in all_targets():
        if same_database(config.url, into_url):
            return config.name
        if into_identity is not None and config.is_postgresql:
            if snapshot_pg.server_identity(config.url) == into_identity:
                return config.name
    return None


def restore_snapshot(
    snapshot_id: int,
    into_url: str,
    *,
    actor: Actor,
    destination: str = "",
    progress: Callable[[RestoreProgress], None] | None = None,
    on_process: Callable[[Callable[[], None] | None], None] | None = None,
) -> dict[str, Any]:
    """Restore a snapshot into a new, empty database and check it.

    Returns {"snapshot", "into" (masked), "destination", "heads", "row_counts":
    {table: n}, "items"}. Raises SnapshotError (audited as refused or failed)
    for an unknown or unusable snapshot, a URL of the wrong kind or naming a
    configured target, a database that is not empty, a failed restore, or
    restored heads that differ from the snapshot's. The snapshot row never
    changes. `progress` gets the archive bytes read and the items restored
    (PostgreSQL) and may raise to stop pg_restore (its single transaction
    rolls back); `on_process` receives a function that kills pg_restore while
    it runs (None when it ended), for a cancel from another thread.
    """
    masked = mask_url(into_url)
    snap = Snapshot.objects.select_related("target").filter(pk=snapshot_id).first()
    if snap is None:
        raise SnapshotError(f"Snapshot #{snapshot_id} does not exist.", reason="not_found", snapshot_id=snapshot_id)
    where = f"destination {destination!r} ({masked})" if destination else masked
    items = 0
    try:
        check_restorable(snap)
        scheme = into_url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in into_url else ""
        wanted = ("postgres", "postgresql") if snap.format == PG_CUSTOM else ("sqlite",)
        if scheme not in wanted:
            kind = (
                "a PostgreSQL archive; the destination must be a postgresql:// URL"
                if snap.format == PG_CUSTOM
                else ("a SQLite copy; the destination must be a sqlite:/// URL of a new file")
            )
            raise SnapshotError(f"Snapshot #{snap.pk} is {kind} (got {where}).", reason="wrong_kind")
        target_name = configured_target_at(into_url, postgresql=snap.format == PG_CUSTOM)
        if target_name is not None:
            raise SnapshotError(
                f"Refusing to restore into {where}: it is the database of target {target_name!r}. "
                "In-place restore is not offered; restore into a new database and swap it in (docs/restore.md).",
                reason="is_target",
            )
        path = snapshot_path(snap)
        if snap.format == PG_CUSTOM:
            snapshot_pg.check_empty(into_url)
            items = snapshot_pg.restore(path, into_url, progress=progress, on_process=on_process)
            heads, counts = snapshot_pg.inspect_restored(into_url)
        else:
            snapshot_sqlite.restore(path, into_url)
            heads, counts = snapshot_sqlite.inspect_restored(into_url)
        if sorted(heads) != sorted(snap.heads):
            raise SnapshotError(
                f"Restored into {where}, but its alembic_version {heads} differs from the snapshot's heads {snap.heads}.",
                reason="heads_mismatch",
            )
    except (OSError, psycopg.Error, sqlite3.Error) as exc:
        # The file vanished or the destination failed mid-way (after pg_restore, while reading it back):
        # a failure like any other, audited, with the password masked.
        failure = SnapshotError(
            f"Restore of snapshot #{snap.pk} into {where} failed: {mask_url(str(exc)).strip()}",
            reason="restore_failed",
        )
        _audit_failure(snap, actor, masked, destination, failure)
        raise failure from exc
    except SnapshotError as exc:
        _audit_failure(snap, actor, masked, destination, exc)
        raise
    append_event(
        action=AuditAction.SNAPSHOT_RESTORED,
        outcome=AuditOutcome.SUCCESS,
        actor=actor,
        target=snap.target.name,
        snapshot_id=snap.pk,
        to_revision=heads,
        message=f"Snapshot #{snap.pk} of {snap.target.name} restored into {where}.",
        detail={"into": masked, "destination": destination, "heads": heads, "row_counts": counts},
    )
    return {
        "snapshot": snap.pk,
        "into": masked,
        "destination": destination,
        "heads": heads,
        "row_counts": counts,
        "items": items,
    }


def _audit_failure(snap: Snapshot, actor: Actor, masked: str, destination: str | None, exc: SnapshotError) -> None:
    outcome = AuditOutcome.REFUSED if exc.reason in RESTORE_REFUSALS else AuditOutcome.FAILURE
    append_event(
        action=AuditAction.SNAPSHOT_RESTORED,
        outcome=outcome,
        actor=actor,
        target=snap.target.name,
        snapshot_id=snap.pk,
        message=str(exc),
        detail={"into": masked, "destination": destination, "reason": exc.reason},
    )
    exc.snapshot_id = snap.pk


def check_restorable(snap: Snapshot, *, hash_file: bool = True) -> None:
    """Raise SnapshotError unless the snapshot is complete or verified and its file matches its checksum.

    `hash_file=False` (queueing a restore from a web request) checks the file's presence and size
    only: hashing a multi-gigabyte archive would hold the request; the worker hashes it before
    pg_restore starts.
    """
    if snap.status not in (SnapshotStatus.COMPLETE, SnapshotStatus.VERIFIED):
        raise SnapshotError(
            f"Snapshot #{snap.pk} is {snap.status}; only a complete or verified snapshot can be restored.",
            reason="not_restorable",
        )
    problem = snapshot_file_problem(snap) if hash_file else snapshot_file_missing(snap)
    if problem:
        raise SnapshotError(f"Refusing to restore: {problem}", reason="file_problem")


def restore_to_destination(
    snapshot_id: int,
    destination: str,
    *,
    actor: Actor,
    progress: Callable[[RestoreProgress], None] | None = None,
    on_process: Callable[[Callable[[], None] | None], None] | None = None,
) -> dict[str, Any]:
    """restore_snapshot into the restore destination named `destination` (its URL read from the settings).

    Raises SnapshotError (audited as refused) for an unknown or misconfigured
    destination, and whatever restore_snapshot raises.
    """
    from opsapp.destinations import get_destination

    try:
        config = get_destination(destination)
    except OpsError as exc:
        snap = Snapshot.objects.select_related("target").filter(pk=snapshot_id).first()
        if snap is None:
            raise SnapshotError(
                f"Snapshot #{snapshot_id} does not exist.", reason="not_found", snapshot_id=snapshot_id
            ) from exc
        refusal = SnapshotError(str(exc), reason=exc.reason, snapshot_id=snap.pk)
        append_event(
            action=AuditAction.SNAPSHOT_RESTORED,
            outcome=AuditOutcome.REFUSED,
            actor=actor,
            target=snap.target.name,
            snapshot_id=snap.pk,
            message=str(exc),
            detail={"destination": destination, "reason": exc.reason},
        )
        raise refusal from exc
    return restore_snapshot(
        snapshot_id, config.url, actor=actor, destination=config.name, progress=progress, on_process=on_process
    )
