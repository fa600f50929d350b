"""The revision catalog: sync a target's script directory and database state into Revision rows.

Admin pages read the synced rows (and `peek_heads`, which stores nothing);
they never write. Only `sync_target` imports migration files, and only when
the script directory's fingerprint changed (or `force`). `refresh_state`
re-reads just `alembic_version`. Both never raise for a target that is down
or a script file that fails to import: they record the state (`unreachable`,
`script_error`) with a masked message instead.

A heads change found by a sync was made outside the console (a deploy, a
manual `alembic` run): it is audited with the actor OUTSIDE_THE_CONSOLE and
the observer (cron, the CLI user, the operator who pressed Sync) in the
detail, never as the observer's own act. Only the re-sync after the
console's own downgrade passes `moved_by` and is attributed to its executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from django.conf import settings
from django.db import connection as console_db
from django.db import transaction
from django.utils import timezone

from opsapp.models import AuditAction, AuditOutcome, Revision, RollbackRequest, Target, TargetState
from opsapp.services.actors import Actor
from opsapp.services.alembic_api import connect
from opsapp.services.audit.log import append_event
from opsapp.services.catalog import drift
from opsapp.services.catalog.load import ROW_FIELDS, LoadedCatalog, fingerprint_of, load_catalog, open_script_directory
from opsapp.services.errors import OpsError, TargetMisconfigured, TargetNotConfigured, TargetUnreachable
from opsapp.services.fleet.versions import read_version_table
from opsapp.targets import TargetConfig, get_target, mask_url

BATCH = 1000
SYSTEM_ACTOR = Actor(username="system:catalog")
# The actor of a heads change the console did not make: who saw it goes in the detail.
OUTSIDE_THE_CONSOLE = "outside the console"
OUTSIDE_ACTOR = Actor(username=OUTSIDE_THE_CONSOLE)


# ------------------------------------------------------------------ helpers
def mirrored_fields(name: str) -> dict[str, Any]:
    """The Target fields that mirror configured target `name` (it must be configured)."""
    raw = settings.OPS_TARGETS[name]
    url = (raw.get("URL") or "").strip()
    return {
        "url_masked": mask_url(url)[:1000],
        "dialect": url.split(":", 1)[0].split("+", 1)[0].lower()[:30] if url else "",
        "alembic_ini": str(raw.get("ALEMBIC_INI") or "")[:1000],
        "tags": dict(raw.get("TAGS") or {}),
    }


def ensure_target_row(name: str) -> Target:
    """The Target row mirroring configured target `name` (created if missing). Raises TargetNotConfigured."""
    if name not in settings.OPS_TARGETS:
        raise TargetNotConfigured(
            f"Target {name!r} is not configured. Configured targets: {', '.join(settings.OPS_TARGETS) or 'none'}.",
            target=name,
        )
    values = mirrored_fields(name)
    target, created = Target.objects.get_or_create(name=name, defaults=values)
    if not created:
        changed = [key for key, value in values.items() if getattr(target, key) != value]
        if changed:
            for key in changed:
                setattr(target, key, values[key])
            target.save(update_fields=changed)
    return target


def script_fingerprint(config: TargetConfig) -> str:
    """sha256 hex over names, sizes and mtimes of the version files, env.py and the ini.

    Raises ScriptDirectoryError when the script directory cannot be opened.
    """
    return fingerprint_of(open_script_directory(config), config.alembic_ini)


def read_current_heads(config: TargetConfig, connection: sa.Connection | None = None) -> list[str]:
    """The revisions in the target's alembic_version, sorted ([] when there is no table or no row).

    Raises TargetUnreachable (password masked) when the database cannot be read.
    """
    if connection is not None:
        return _heads_on(config, connection)
    if config.is_postgresql:
        # One connection and one SELECT (no SQLAlchemy engine, no has_table probe): the fleet's cost.
        return read_version_table(config)
    with connect(config, shared=True) as conn:
        return _heads_on(config, conn)


def _heads_on(config: TargetConfig, connection: sa.Connection) -> list[str]:
    try:
        return sorted(MigrationContext.configure(connection).get_current_heads())
    except sa.exc.SQLAlchemyError as exc:
        raise TargetUnreachable(
            f"Target {config.name!r}: cannot read alembic_version: {mask_url(str(getattr(exc, 'orig', None) or exc)).strip()}",
            target=config.name,
        ) from exc


# --------------------------------------------------------------- state logic
@dataclass
class DbRead:
    heads: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class _Graph:
    """Parents of every revision (down revisions plus resolved depends_on), from rows or a fresh load."""

    parents: dict[str, tuple[str, ...]]
    heads: list[str]

    @classmethod
    def from_rows(cls, rows: dict[str, dict[str, Any]], heads: list[str]) -> _Graph:
        # depends_on may name a branch label; Alembic resolves a label to the revision declaring it.
        names = {rev: rev for rev in rows}
        for rev, row in rows.items():
            for label in row["branch_labels"]:
                names.setdefault(label, rev)
        parents = {
            rev: tuple(row["down_revisions"]) + tuple(names[d] for d in row["depends_on"] if d in names)
            for rev, row in rows.items()
        }
        return cls(parents=parents, heads=heads)

    def ancestors(self, revisions: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = [rev for rev in revisions if rev in self.parents]
        while todo:
            rev = todo.pop()
            if rev in seen:
                continue
            seen.add(rev)
            todo.extend(p for p in self.parents.get(rev, ()) if p not in seen)
        return seen

    def covered_rows(self, revisions: list[str]) -> dict[str, list[str]]:
        """Each of `revisions` that is an ancestor of another one of them -> those it is below.

        Dependencies count: Alembic collapses a `depends_on` revision into its dependant's row too.
        """
        covered: dict[str, list[str]] = {}
        for newer in sorted(set(revisions)):
            for rev in (self.ancestors([newer]) - {newer}) & set(revisions):
                covered.setdefault(rev, []).append(newer)
        return covered


@dataclass
class StateResult:
    state: str
    detail: str
    pending_count: int
    applied: set[str]
    current: set[str]


def compute_state(target: Target, graph: _Graph, db: DbRead) -> StateResult:
    """Pure state decision from the catalog graph and what alembic_version holds."""
    total = len(graph.parents)
    current = set(db.heads)
    known = [rev for rev in db.heads if rev in graph.parents]
    unknown = [rev for rev in db.heads if rev not in graph.parents]
    applied = graph.ancestors(known)
    pending = total - len(applied)
    if target.sync_errors:
        return StateResult(
            TargetState.SCRIPT_ERROR,
            drift.explain_script_errors(target.name, target.sync_errors),
            pending,
            applied,
            current,
        )
    if db.error is not None:
        return StateResult(TargetState.UNREACHABLE, db.error, pending, applied, current)
    if unknown:
        detail = drift.explain_unknown_revision(target.name, unknown, known, graph.heads, total)
        return StateResult(TargetState.UNKNOWN_REVISION, detail, pending, applied, current)
    if not db.heads:
        detail = f"The database has no alembic_version (or it is empty): none of the {total} revisions is applied."
        if len(graph.heads) > 1:
            detail += " " + drift.explain_multiple_heads(target.name, graph.heads, db.heads)
        return StateResult(TargetState.EMPTY, detail, pending, applied, current)
    covered = graph.covered_rows(db.heads)
    if covered:
        keep = sorted(current - set(covered))
        detail = drift.explain_overlapping_versions(target.name, covered, keep)
        return StateResult(TargetState.OVERLAPPING_VERSIONS, detail, pending, applied, current)
    if len(graph.heads) > 1 and current != set(graph.heads):
        detail = drift.explain_multiple_heads(target.name, graph.heads, db.heads)
        return StateResult(TargetState.MULTIPLE_HEADS, detail, pending, applied, current)
    if pending == 0 and current == set(graph.heads):
        return StateResult(TargetState.AT_HEAD, f"At head: {', '.join(db.heads)}.", 0, applied, current)
    detail = f"Behind: {pending} revision(s) not applied; the database is at {', '.join(db.heads)}, the scripts' head is {', '.join(graph.heads)}."
    return StateResult(TargetState.BEHIND, detail, pending, applied, current)


# ---------------------------------------------------------------- writing
def _chunks(items: list, size: int = BATCH):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _upsert_rows(target: Target, rows: dict[str, dict[str, Any]], result: StateResult) -> int:
    """Create, update and delete Revision rows in batches; no per-row queries. Returns how many rows changed."""
    existing = {
        values["revision"]: values
        for values in Revision.objects.filter(target=target).values(
            "id", "revision", *ROW_FIELDS, "applied", "is_current"
        )
    }
    to_create, to_update = [], []
    fields = (*ROW_FIELDS, "applied", "is_current")
    for rev, row in rows.items():
        wanted = {**row, "applied": rev in result.applied, "is_current": rev in result.current}
        old = existing.get(rev)
        if old is None:
            to_create.append(Revision(target=target, revision=rev, **wanted))
        elif any(old[name] != wanted[name] for name in fields):
            to_update.append(Revision(id=old["id"], target=target, revision=rev, **wanted))
    gone = [values["id"] for rev, values in existing.items() if rev not in rows]
    for chunk in _chunks(gone):
        Revision.objects.filter(id__in=chunk).delete()
    Revision.objects.bulk_create(to_create, batch_size=BATCH)
    Revision.objects.bulk_update(to_update, fields, batch_size=250)
    return len(gone) + len(to_create) + len(to_update)


def _analyze_revisions() -> None:
    """Refresh PostgreSQL's statistics of the revision table (after a bulk sync they are stale:
    the changelist's plan would be chosen on row estimates from before the sync)."""
    if console_db.vendor == "postgresql":
        with console_db.cursor() as cursor:
            cursor.execute(f"ANALYZE {console_db.ops.quote_name(Revision._meta.db_table)}")


def _update_flags(target: Target, result: StateResult) -> None:
    """Set applied/is_current from `result`, touching only rows whose flag changes."""
    current_flags = Revision.objects.filter(target=target).values_list("id", "revision", "applied", "is_current")
    changes: dict[tuple[str, bool], list[int]] = {}
    for pk, rev, applied, is_current in current_flags:
        if applied != (rev in result.applied):
            changes.setdefault(("applied", not applied), []).append(pk)
        if is_current != (rev in result.current):
            changes.setdefault(("is_current", not is_current), []).append(pk)
    for (name, value), ids in changes.items():
        for chunk in _chunks(ids, 5000):
            Revision.objects.filter(id__in=chunk).update(**{name: value})


def _rows_from_db(target: Target) -> dict[str, dict[str, Any]]:
    return {
        values["revision"]: values
        for values in Revision.objects.filter(target=target).values(
            "revision", "down_revisions", "depends_on", "branch_labels"
        )
    }


def _read_db(config: TargetConfig | None, problem: str | None, last_known: list[str]) -> DbRead:
    """What alembic_version holds; on failure the error (masked) plus the last known heads for the flags."""
    if config is None:
        return DbRead(heads=list(last_known), error=problem or "target is misconfigured")
    try:
        return DbRead(heads=read_current_heads(config))
    except TargetUnreachable as exc:
        return DbRead(heads=list(last_known), error=str(exc))
    except Exception as exc:  # noqa: BLE001 - any driver failure shows as unreachable, masked
        return DbRead(heads=list(last_known), error=f"Target {config.name!r} is unreachable: {mask_url(str(exc))}")


def _record_heads(target: Target, db: DbRead, observer: Actor, moved_by: RollbackRequest | None = None) -> None:
    """Audit a heads change seen since the last look (the history Alembic does not keep).

    Attributed to OUTSIDE_THE_CONSOLE with `observer` in the detail, unless
    `moved_by` (the console's own request that just ran) explains it.
    """
    if db.error is not None:
        return
    new = sorted(db.heads)
    old = target.last_seen_heads
    if old is not None and sorted(old) != new:
        change = f"from {', '.join(sorted(old)) or '(empty)'} to {', '.join(new) or '(empty)'}"
        detail = {"old_heads": sorted(old), "new_heads": new}
        if moved_by is not None:
            # The request's own trail already ends in its outcome; this event only links to it.
            actor = observer
            message = f"Heads of {target.name} changed {change} by rollback request #{moved_by.pk}."
            detail["moved_by_request"] = moved_by.pk
        else:
            actor = OUTSIDE_ACTOR
            message = f"Heads of {target.name} changed {change} outside the console (seen by {observer.username})."
            detail.update(
                observed_by=observer.username, observed_by_user_id=observer.user_id, observed_by_ip=observer.client_ip
            )
        append_event(
            action=AuditAction.HEADS_CHANGED,
            outcome=AuditOutcome.INFO,
            actor=actor,
            target=target.name,
            from_revision=sorted(old),
            to_revision=new,
            message=message,
            detail=detail,
        )
    target.last_seen_heads = new
    target.current_heads = new


def _apply_state(
    target: Target,
    graph: _Graph,
    db: DbRead,
    actor: Actor,
    *,
    note: str = "",
    moved_by: RollbackRequest | None = None,
) -> StateResult:
    result = compute_state(target, graph, db)
    _record_heads(target, db, actor, moved_by)
    target.state = result.state
    target.state_detail = (result.detail + (" " + note if note else "")).strip()
    target.pending_count = result.pending_count
    target.last_checked_at = timezone.now()
    return result


def _config(name: str) -> tuple[TargetConfig | None, str | None]:
    try:
        return get_target(name), None
    except TargetMisconfigured as exc:
        return None, str(exc)


_STEADY_STATES = (
    TargetState.AT_HEAD,
    TargetState.BEHIND,
    TargetState.MULTIPLE_HEADS,
    TargetState.UNKNOWN_REVISION,
    TargetState.OVERLAPPING_VERSIONS,
    TargetState.EMPTY,
)


def _nothing_changed(target: Target, loaded: LoadedCatalog | None, problem: str | None, db: DbRead) -> bool:
    """True when neither the scripts nor alembic_version moved since the last sync.

    The state and flags are a pure function of the synced rows, the script
    heads and the database heads; when none changed there is nothing to
    recompute (the cron re-sync of an unchanged target costs a few queries).
    """
    return (
        loaded is None
        and problem is None
        and db.error is None
        and target.last_synced_at is not None
        and target.last_seen_heads is not None
        and not target.sync_errors
        and target.state in _STEADY_STATES
        and sorted(db.heads) == sorted(target.current_heads) == sorted(target.last_seen_heads)
        # refresh_state notes a changed or unreadable directory in state_detail: recompute then.
        and "since the last sync" not in target.state_detail
        and "cannot be read now" not in target.state_detail
    )


# ------------------------------------------------------------------ public
def sync_target(
    name: str, *, actor: Actor | None = None, force: bool = False, moved_by: RollbackRequest | None = None
) -> Target:
    """Sync target `name`'s catalog and state; return the saved Target.

    `actor` is who syncs (the observer of any heads change, which is audited
    as made outside the console); `moved_by` is the console's own request
    whose downgrade just moved the heads. Re-imports the script directory
    only when its fingerprint changed (or `force`); the returned object's
    `catalog_reread` attribute says whether it did. Raises
    TargetNotConfigured for an unknown name; never raises for an unreachable
    database or a broken script directory.
    """
    actor = actor or SYSTEM_ACTOR
    target = ensure_target_row(name)
    config, problem = _config(name)
    fingerprint, loaded = "", None
    if config is not None:
        try:
            fingerprint = script_fingerprint(config)
        except OpsError as exc:
            problem = str(exc)
        if problem is None and (force or fingerprint != target.script_fingerprint or target.last_synced_at is None):
            loaded = load_catalog(config)
    with transaction.atomic():
        target = Target.objects.select_for_update().get(pk=target.pk)
        # Read alembic_version under the row lock: read before it, a slower
        # concurrent sync could store stale heads after a newer one and audit
        # a change that never happened.
        db = _read_db(config, problem, target.current_heads)
        if _nothing_changed(target, loaded, problem, db):
            target.last_synced_at = target.last_checked_at = timezone.now()
            target.save(update_fields=["last_synced_at", "last_checked_at"])
            target.catalog_reread = False
            return target
        rows: dict[str, dict[str, Any]] | None = None
        if problem is not None:
            target.sync_errors = [{"file": "", "error": mask_url(problem)}]
            target.script_fingerprint = ""
        elif loaded is not None and (
            force or fingerprint != target.script_fingerprint or target.last_synced_at is None
        ):
            target.script_fingerprint = fingerprint
            target.sync_errors = loaded.errors
            if not loaded.errors:
                rows = loaded.rows
                target.script_heads = loaded.heads
                target.revision_count = len(rows)
        else:
            # Unchanged directory (or another sync just stored it): nothing to re-read.
            loaded = None
        graph_rows = rows if rows is not None else _rows_from_db(target)
        graph = _Graph.from_rows(graph_rows, list(target.script_heads))
        result = _apply_state(target, graph, db, actor, moved_by=moved_by)
        if rows is not None:
            if _upsert_rows(target, rows, result) >= BATCH:
                # After the commit: ANALYZE's lock would otherwise be held with the target row's.
                transaction.on_commit(_analyze_revisions)
        else:
            _update_flags(target, result)
        target.last_synced_at = timezone.now()
        target.save()
    target.catalog_reread = loaded is not None
    return target


def sync_all(*, actor: Actor | None = None, force: bool = False) -> list[Target]:
    """sync_target for every configured target, in configuration order."""
    return [sync_target(name, actor=actor, force=force) for name in settings.OPS_TARGETS]


def peek_heads(name: str) -> DbRead:
    """What target `name`'s alembic_version holds now, or the (masked) error; stores nothing.

    For pages: they show live heads beside the catalog's and ask for a Sync
    when they differ. Raises TargetNotConfigured for an unknown name.
    """
    config, problem = _config(name)
    return _read_db(config, problem, [])


def stale_catalog_note(target: Target) -> str:
    """Why the synced catalog may be stale ("" when its script directory is unchanged); stores nothing.

    Compares file names, sizes and mtimes only: never imports a migration file.
    """
    if not target.script_fingerprint:
        return ""
    config, _ = _config(target.name)
    if config is None:
        return ""
    try:
        if script_fingerprint(config) != target.script_fingerprint:
            return "The script directory changed since the last sync: run sync_revisions to update the catalog."
    except OpsError as exc:
        return f"The script directory cannot be read now: {exc}"
    return ""


def refresh_state(name: str, *, actor: Actor | None = None) -> Target:
    """Re-read only alembic_version and recompute state and flags from the synced rows.

    Never imports a migration file. When the script directory changed since
    the last sync, says so in `state_detail` (the catalog is stale).
    Raises TargetNotConfigured for an unknown name.
    """
    actor = actor or SYSTEM_ACTOR
    target = ensure_target_row(name)
    config, problem = _config(name)
    note = stale_catalog_note(target)
    with transaction.atomic():
        target = Target.objects.select_for_update().get(pk=target.pk)
        db = _read_db(config, problem, target.current_heads)  # under the lock, as in sync_target
        graph = _Graph.from_rows(_rows_from_db(target), list(target.script_heads))
        if target.last_synced_at is None:
            _record_heads(target, db, actor)
            target.state = TargetState.UNREACHABLE if db.error else TargetState.NOT_SYNCED
            target.state_detail = db.error or "The catalog has not been synced yet: run sync_revisions."
            target.last_checked_at = timezone.now()
        else:
            _update_flags(target, _apply_state(target, graph, db, actor, note=note))
        target.save()
    target.catalog_reread = False
    return target


__all__ = [
    "LoadedCatalog",
    "compute_state",
    "ensure_target_row",
    "peek_heads",
    "read_current_heads",
    "refresh_state",
    "script_fingerprint",
    "stale_catalog_note",
    "sync_all",
    "sync_target",
]
