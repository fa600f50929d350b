"""Snapshots of targets: take, verify, prune (issue 5); restore is in `restore`.

A snapshot file is written to a hidden temporary name in OPS_SNAPSHOT_DIR,
flushed, and only then renamed to its final, unique name
(`<target>-<UTC time>-<row id>.<ext>`), so concurrent runs never share a file
and a crash never leaves a half-written file under a real name. Every state
change is audited with its actor: SNAPSHOT_TAKEN, SNAPSHOT_VERIFIED,
SNAPSHOT_FAILED (whenever a row becomes `failed`, on take or verify),
SNAPSHOT_RESTORED (success, failure or refused) and SNAPSHOT_PRUNED.

The format-specific work lives in `postgres` (pg_dump / pg_restore) and
`sqlite` (the backup API); this module owns rows, files and audit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from opsapp.models import AuditAction, AuditOutcome, Snapshot, SnapshotStatus, Target
from opsapp.models.rollback import OPEN_STATUSES, RollbackRequest
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event
from opsapp.services.catalog.sync import ensure_target_row
from opsapp.services.errors import OpsError, SnapshotError
from opsapp.services.snapshots import postgres as snapshot_pg
from opsapp.services.snapshots import sqlite as snapshot_sqlite
from opsapp.services.snapshots.files import ensure_dir, fsync_dir, sha256_file
from opsapp.targets import get_target, mask_url

PG_CUSTOM = "pg_custom"
SQLITE = "sqlite"
VERIFIABLE = (SnapshotStatus.COMPLETE, SnapshotStatus.VERIFIED, SnapshotStatus.FAILED)


def snapshot_path(snapshot: Snapshot) -> Path:
    """Where the snapshot's file is (its `path` is relative to OPS_SNAPSHOT_DIR)."""
    return Path(settings.OPS_SNAPSHOT_DIR) / snapshot.path


def latest_verified_snapshot(target: Target) -> Snapshot | None:
    return Snapshot.objects.filter(target=target, status=SnapshotStatus.VERIFIED).order_by("-started_at", "-id").first()


def snapshot_summary(snapshot: Snapshot) -> dict[str, Any]:
    """The machine-readable form the commands print with --json."""
    return {
        "id": snapshot.pk,
        "target": snapshot.target.name,
        "status": snapshot.status,
        "sha256": snapshot.sha256,
        "size": snapshot.size,
        "heads": snapshot.heads,
        "path": snapshot.path,
        "error": snapshot.error,
    }


# ---------------------------------------------------------------------- take
def take_snapshot(
    target_name: str,
    *,
    actor: Actor,
    progress: Callable[[int], None] | None = None,
    on_created: Callable[[Snapshot], None] | None = None,
) -> Snapshot:
    """Take a full backup of the target, then verify it at once; return the verified row.

    Raises TargetNotConfigured / TargetMisconfigured (no row is created) for a
    bad name, and SnapshotError (with `.snapshot_id`) after marking the row
    `failed`, removing any partial file and auditing SNAPSHOT_FAILED, when the
    dump or its verification fails. `progress` receives the bytes written so far
    (and may raise to stop the dump: the file is removed, the row failed);
    `on_created` receives the `running` row as soon as it exists.
    """
    config = get_target(target_name)
    target = ensure_target_row(target_name)
    fmt = PG_CUSTOM if config.is_postgresql else SQLITE
    snap = Snapshot.objects.create(
        target=target,
        status=SnapshotStatus.RUNNING,
        format=fmt,
        taken_by=actor.username[:150],
        taken_by_user_id=actor.user_id,
    )
    if on_created is not None:
        on_created(snap)
    filename = f"{target.name}-{snap.started_at:%Y%m%dT%H%M%SZ}-{snap.pk}.{'dump' if fmt == PG_CUSTOM else 'sqlite3'}"
    directory = Path(settings.OPS_SNAPSHOT_DIR)
    partial = directory / f".{filename}.partial"
    final = directory / filename
    try:
        ensure_dir(directory)
        dumper = snapshot_pg.dump if fmt == PG_CUSTOM else snapshot_sqlite.dump
        result = dumper(config, partial, progress)
        if sorted(result.heads) != sorted(result.heads_after):
            raise SnapshotError(
                f"Target {target.name!r}: heads changed during dump (from {result.heads or ['(empty)']} "
                f"to {result.heads_after or ['(empty)']}); the snapshot would match no revision. Take it again.",
                reason="heads_changed",
            )
        os.replace(partial, final)
        fsync_dir(directory)
        # The row turns `complete` together with its audit event, or not at all:
        # a failed audit write must not leave an unaudited complete snapshot.
        with transaction.atomic():
            snap.path = filename
            snap.size = result.size
            snap.database_size = result.database_size
            snap.sha256 = result.sha256
            snap.heads = sorted(result.heads)
            snap.dump_tool_version = result.tool_version[:200]
            snap.server_version = result.server_version[:200]
            snap.status = SnapshotStatus.COMPLETE
            snap.finished_at = timezone.now()
            snap.save()
            append_event(
                action=AuditAction.SNAPSHOT_TAKEN,
                outcome=AuditOutcome.SUCCESS,
                actor=actor,
                target=target.name,
                snapshot_id=snap.pk,
                from_revision=snap.heads,
                message=f"Snapshot #{snap.pk} of {target.name} taken ({snap.size} bytes).",
                detail={
                    "path": snap.path,
                    "size": snap.size,
                    "sha256": snap.sha256,
                    "heads": snap.heads,
                    "format": fmt,
                },
            )
    except BaseException as exc:
        for leftover in (partial, final):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
        snap.path = ""
        message = _describe_take_error(exc, directory, target.name)
        _mark_failed(snap, message, actor, phase="take")
        if isinstance(exc, Exception):
            raise SnapshotError(
                message, snapshot_id=snap.pk, target=target.name, reason=getattr(exc, "reason", None)
            ) from exc
        raise
    snap = verify_snapshot(snap, actor=actor)
    if snap.status != SnapshotStatus.VERIFIED:
        raise SnapshotError(
            f"Snapshot #{snap.pk} of {target.name} was taken but failed verification: {snap.error}",
            snapshot_id=snap.pk,
            target=target.name,
        )
    return snap


def _describe_take_error(exc: BaseException, directory: Path, target_name: str) -> str:
    if isinstance(exc, OpsError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"Cannot write the snapshot file in {str(directory)!r}: {exc.strerror or exc}."
    if isinstance(exc, Exception):
        return f"Snapshot of {target_name} failed: {type(exc).__name__}: {mask_url(str(exc))}"
    return f"Snapshot of {target_name} was interrupted ({type(exc).__name__})."


def _mark_failed(snap: Snapshot, message: str, actor: Actor, *, phase: str) -> None:
    snap.status = SnapshotStatus.FAILED
    snap.error = message
    snap.finished_at = snap.finished_at or timezone.now()
    snap.save(update_fields=["status", "error", "finished_at"])
    append_event(
        action=AuditAction.SNAPSHOT_FAILED,
        outcome=AuditOutcome.FAILURE,
        actor=actor,
        target=snap.target.name,
        snapshot_id=snap.pk,
        message=message,
        detail={"phase": phase, "path": snap.path},
    )


# -------------------------------------------------------------------- verify
def snapshot_file_problem(snapshot: Snapshot) -> str | None:
    """None when the file exists and its SHA-256 matches the recorded one now; else what is wrong."""
    if not snapshot.path or not snapshot.sha256:
        return f"Snapshot #{snapshot.pk} has no file (status {snapshot.status})."
    path = snapshot_path(snapshot)
    if not path.is_file():
        return f"Snapshot #{snapshot.pk}: file {str(path)!r} is missing (deleted outside the console)."
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return f"Snapshot #{snapshot.pk}: file {str(path)!r} cannot be read: {exc.strerror or exc}."
    if actual != snapshot.sha256:
        return (
            f"Snapshot #{snapshot.pk}: file {str(path)!r} was altered: checksum mismatch "
            f"(SHA-256 now {actual[:16]}..., recorded {snapshot.sha256[:16]}...)."
        )
    return None


def snapshot_file_missing(snapshot: Snapshot) -> str | None:
    """snapshot_file_problem without the hash: None when the file is there at its recorded size.

    For callers that must answer at once (a web request) or that hash the file themselves later.
    """
    path = snapshot_path(snapshot) if snapshot.path else None
    if path is None or not path.is_file():
        return snapshot_file_problem(snapshot)  # says which: no file recorded, or missing
    if snapshot.size is not None and path.stat().st_size != snapshot.size:
        return f"Snapshot #{snapshot.pk}: file {str(path)!r} is {path.stat().st_size} bytes, not the {snapshot.size} recorded."
    return None


def _archive_problem(snapshot: Snapshot) -> str | None:
    problem = snapshot_file_problem(snapshot)
    if problem:
        return problem
    try:
        if snapshot.format == PG_CUSTOM:
            snapshot_pg.check_archive(snapshot_path(snapshot))
        else:
            snapshot_sqlite.check_file(snapshot_path(snapshot))
    except SnapshotError as exc:
        return f"Snapshot #{snapshot.pk}: {exc}"
    return None


def verify_snapshot(snapshot: Snapshot, *, actor: Actor) -> Snapshot:
    """Check file, checksum and that the archive reads back; set `verified` or `failed`; audit either way.

    Raises SnapshotError for a snapshot that has nothing to verify (running,
    pruned, or failed before its file was written); nothing changes then.
    """
    snapshot.refresh_from_db()
    if snapshot.status not in VERIFIABLE or not snapshot.sha256:
        raise SnapshotError(
            f"Snapshot #{snapshot.pk} is {snapshot.status} and has no file to verify.", snapshot_id=snapshot.pk
        )
    problem = _archive_problem(snapshot)
    now = timezone.now()
    if problem is None:
        changes = {"status": SnapshotStatus.VERIFIED, "verified_at": now, "error": ""}
    else:
        changes = {"status": SnapshotStatus.FAILED, "error": problem, "finished_at": snapshot.finished_at or now}
    # Conditional: a prune that ran meanwhile wins, and nothing is audited for it here.
    updated = Snapshot.objects.filter(pk=snapshot.pk, status__in=VERIFIABLE).update(**changes)
    snapshot.refresh_from_db()
    if not updated:
        return snapshot
    if problem is None:
        append_event(
            action=AuditAction.SNAPSHOT_VERIFIED,
            outcome=AuditOutcome.SUCCESS,
            actor=actor,
            target=snapshot.target.name,
            snapshot_id=snapshot.pk,
            from_revision=snapshot.heads,
            message=f"Snapshot #{snapshot.pk} of {snapshot.target.name} verified.",
            detail={"path": snapshot.path, "sha256": snapshot.sha256},
        )
    else:
        append_event(
            action=AuditAction.SNAPSHOT_FAILED,
            outcome=AuditOutcome.FAILURE,
            actor=actor,
            target=snapshot.target.name,
            snapshot_id=snapshot.pk,
            message=problem,
            detail={"phase": "verify", "path": snapshot.path},
        )
    return snapshot


def snapshots_to_verify(target_name: str | None = None) -> QuerySet[Snapshot]:
    """What `verify_snapshots` checks: every complete or verified snapshot, oldest first."""
    qs = Snapshot.objects.select_related("target").filter(status__in=[SnapshotStatus.COMPLETE, SnapshotStatus.VERIFIED])
    if target_name:
        qs = qs.filter(target__name=target_name)
    return qs.order_by("started_at", "id")


# --------------------------------------------------------------------- prune
# A take that is still `running` after this long was killed (SIGKILL, OOM, a
# reboot) before it could mark itself failed. Generous: big dumps take hours.
ABANDONED_AFTER = timedelta(hours=24)


def fail_abandoned_snapshots(*, actor: Actor, older_than: timedelta = ABANDONED_AFTER) -> list[Snapshot]:
    """Mark `running` rows started more than `older_than` ago `failed`, remove their partial files, audit each.

    The conditional UPDATE makes overlapping runs safe: each row is failed once.
    """
    cutoff = timezone.now() - older_than
    failed: list[Snapshot] = []
    stale = (
        Snapshot.objects.select_related("target")
        .filter(status=SnapshotStatus.RUNNING, started_at__lt=cutoff)
        # A snapshot job's liveness is its worker's lock, not its age (operations.reconcile).
        .exclude(operations__state="running")
    )
    for snap in stale.order_by("started_at", "id"):
        message = (
            f"Snapshot #{snap.pk} of {snap.target.name} was abandoned: still running after {older_than} "
            "(the process taking it was killed or crashed). Take a new snapshot."
        )
        if fail_interrupted_snapshot(snap, message, actor=actor, phase="abandoned"):
            failed.append(snap)
    return failed


def fail_interrupted_snapshot(snap: Snapshot, message: str, *, actor: Actor, phase: str) -> bool:
    """Mark a `running` snapshot whose process died `failed`, remove its partial file, audit it; False if not running.

    The conditional UPDATE makes overlapping callers safe: each row is failed once.
    """
    with transaction.atomic():
        updated = Snapshot.objects.filter(pk=snap.pk, status=SnapshotStatus.RUNNING).update(
            status=SnapshotStatus.FAILED, error=message, finished_at=timezone.now()
        )
        if not updated:
            return False
        append_event(
            action=AuditAction.SNAPSHOT_FAILED,
            outcome=AuditOutcome.FAILURE,
            actor=actor,
            target=snap.target.name,
            snapshot_id=snap.pk,
            message=message,
            detail={"phase": phase},
        )
    directory = Path(settings.OPS_SNAPSHOT_DIR)
    for leftover in directory.glob(f".{snap.target.name}-*-{snap.pk}.*.partial"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    snap.refresh_from_db()
    return True


def prune_snapshots(*, actor: Actor, target_name: str | None, keep: int, older_than_days: int) -> list[Snapshot]:
    """Delete old snapshot files and mark their rows `pruned`; return the pruned rows.

    First fails snapshots abandoned in `running` (fail_abandoned_snapshots).
    Per target, the `keep` newest complete/verified snapshots stay; of the
    rest (failed ones included), those started more than `older_than_days`
    ago go. Never pruned: the newest verified snapshot of a target, one
    attached to an open (pending or running) rollback request, a running one.
    Raises SnapshotError for negative numbers, TargetNotConfigured for an
    unknown target name.
    """
    if keep < 0 or older_than_days < 0:
        raise SnapshotError("--keep and --older-than must be zero or more.", reason="bad_usage")
    if target_name:
        targets = list(Target.objects.filter(name=target_name))
        if not targets:
            get_target(target_name)  # raises for an unknown name; a configured one simply has no snapshots
    else:
        targets = list(Target.objects.all())
    fail_abandoned_snapshots(actor=actor)
    cutoff = timezone.now() - timedelta(days=older_than_days)
    pruned: list[Snapshot] = []
    for target in targets:
        newest_verified = latest_verified_snapshot(target)
        usable = Snapshot.objects.filter(target=target, status__in=[SnapshotStatus.COMPLETE, SnapshotStatus.VERIFIED])
        kept = set(usable.order_by("-started_at", "-id").values_list("pk", flat=True)[:keep]) if keep else set()
        if newest_verified:
            kept.add(newest_verified.pk)
        candidates = (
            Snapshot.objects.filter(target=target, status__in=VERIFIABLE, started_at__lt=cutoff)
            .exclude(pk__in=kept)
            .order_by("started_at", "id")
        )
        for snap in candidates:
            done = _prune_one(snap, actor)
            if done is not None:
                pruned.append(done)
    return pruned


def _prune_one(snap: Snapshot, actor: Actor) -> Snapshot | None:
    with transaction.atomic():
        # Locked so an overlapping prune or a concurrent attach sees a settled row.
        locked = (
            Snapshot.objects.select_for_update()
            .select_related("target")
            .filter(pk=snap.pk, status__in=VERIFIABLE)
            .first()
        )
        if locked is None:
            return None
        if RollbackRequest.objects.filter(snapshot_id=locked.pk, status__in=OPEN_STATUSES).exists():
            return None
        had_file = bool(locked.path) and snapshot_path(locked).exists()
        previous = locked.status
        locked.status = SnapshotStatus.PRUNED
        locked.pruned_at = timezone.now()
        locked.save(update_fields=["status", "pruned_at"])
        append_event(
            action=AuditAction.SNAPSHOT_PRUNED,
            outcome=AuditOutcome.SUCCESS,
            actor=actor,
            target=locked.target.name,
            snapshot_id=locked.pk,
            message=f"Snapshot #{locked.pk} of {locked.target.name} pruned (was {previous}).",
            detail={"path": locked.path, "file_deleted": had_file, "previous_status": previous},
        )
        # The file goes last: if the row update or its audit event fails, the
        # transaction rolls back and the snapshot is still there, still usable.
        if locked.path:
            try:
                snapshot_path(locked).unlink(missing_ok=True)
            except OSError as exc:
                raise SnapshotError(
                    f"Cannot delete {str(snapshot_path(locked))!r}: {exc.strerror or exc}.", snapshot_id=locked.pk
                ) from exc
    return locked
