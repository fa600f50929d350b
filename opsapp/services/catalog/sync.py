"""The revision catalog: sync a target's script directory (its shared catalog) and database state.

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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from opsapp.models import AuditAction, AuditOutcome, RollbackRequest, ScriptCatalog, Target, TargetState
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event
from opsapp.services.catalog import drift, store
from opsapp.services.catalog.load import LoadedCatalog, fingerprint_of, script_locations
from opsapp.services.catalog.store import CatalogRead, Graph, graph_of
from opsapp.services.errors import OpsError, TargetMisconfigured, TargetNotConfigured, TargetUnreachable
from opsapp.services.version_table import read_heads
from opsapp.targets import TargetConfig, get_target, mask_url

if TYPE_CHECKING:
    import sqlalchemy as sa

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
    return fingerprint_of(script_locations(config), config.alembic_ini)


def read_current_heads(config: TargetConfig, connection: sa.Connection | None = None) -> list[str]:
    """The revisions in the target's alembic_version, sorted ([] when there is no table or no row).

    Raises TargetUnreachable (password masked) when the database cannot be read.
    """
    if connection is not None:
        return _heads_on(config, connection)
    # The bare driver when it can (no SQLAlchemy import in a cron run), else SQLAlchemy's engine.
    heads = read_heads(config)
    if heads is not None:
        return heads
    from opsapp.services.alembic_api import connect

    with connect(config, shared=True) as conn:
        return _heads_on(config, conn)


def _heads_on(config: TargetConfig, connection: sa.Connection) -> list[str]:
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

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


_Graph = Graph  # the parent graph of a catalog (store.Graph)


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


def _nothing_changed(target: Target, found: CatalogRead | None, problem: str | None, db: DbRead) -> bool:
    """True when neither the scripts nor alembic_version moved since the last sync.

    The state is a pure function of the catalog, the script
    heads and the database heads; when none changed there is nothing to
    recompute (the cron re-sync of an unchanged target costs a few queries).
    """
    return (
        found is None
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
    name: str,
    *,
    actor: Actor | None = None,
    force: bool = False,
    moved_by: RollbackRequest | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> Target:
    """Sync target `name`'s catalog and state; return the saved Target.

    `actor` is who syncs (the observer of any heads change, which is audited
    as made outside the console); `moved_by` is the console's own request
    whose downgrade just moved the heads. Looks at the script directory only
    when its fingerprint changed (or `force`), and then reuses the catalog of
    a target that already read the same files; the returned object's
    `catalog_reread` attribute says whether this sync imported them. Raises
    TargetNotConfigured for an unknown name; never raises for an unreachable
    database or a broken script directory.

    `checkpoint` is called at the safe points, where stopping leaves the
    catalog exactly as it was: after the script directory was read, and
    under the target row's lock just before the first write. Whatever it
    raises propagates, and nothing is written (a queued sync's cancel).
    """
    actor = actor or SYSTEM_ACTOR
    target = ensure_target_row(name)
    config, problem = _config(name)
    fingerprint, found = "", None
    if config is not None:
        try:
            fingerprint = script_fingerprint(config)
        except OpsError as exc:
            problem = str(exc)
        if problem is None and (force or fingerprint != target.script_fingerprint or target.last_synced_at is None):
            found = store.catalog_for(config, fingerprint, force=force, previous=target.catalog_id)
    if checkpoint is not None:
        checkpoint()
    with transaction.atomic():
        target = Target.objects.select_for_update().get(pk=target.pk)
        previous_catalog = target.catalog_id
        # Read alembic_version under the row lock: read before it, a slower
        # concurrent sync could store stale heads after a newer one and audit
        # a change that never happened.
        db = _read_db(config, problem, target.current_heads)
        if checkpoint is not None:
            checkpoint()  # the last point before the first write; raising rolls this transaction back
        if _nothing_changed(target, found, problem, db):
            target.last_synced_at = target.last_checked_at = timezone.now()
            target.save(update_fields=["last_synced_at", "last_checked_at"])
            target.catalog_reread = False
            return target
        if problem is not None:
            target.sync_errors = [{"file": "", "error": mask_url(problem)}]
            target.script_fingerprint = ""
        elif found is not None and (force or fingerprint != target.script_fingerprint or target.last_synced_at is None):
            target.script_fingerprint = fingerprint
            target.sync_errors = found.errors
            if found.catalog is not None:
                _point_at(target, found.catalog)
        else:
            # Unchanged directory (or another sync just stored it): nothing to re-read.
            found = None
        graph = graph_of(target.catalog, list(target.script_heads))
        _apply_state(target, graph, db, actor, moved_by=moved_by)
        target.last_synced_at = timezone.now()
        target.save()
    if previous_catalog != target.catalog_id:
        store.prune_catalogs([previous_catalog])
    target.catalog_reread = found is not None and found.reread
    return target


def _point_at(target: Target, catalog: ScriptCatalog) -> None:
    """Point `target` at `catalog`, locked so that a concurrent prune cannot delete it under us."""
    if not ScriptCatalog.objects.select_for_update().filter(pk=catalog.pk).exists():
        # Pruned since it was found (the last target on it moved away, a rare race):
        # forget the file fingerprint so the next sync reads the directory again.
        target.script_fingerprint = ""
        return
    target.catalog = catalog
    target.script_heads = list(catalog.heads)
    target.revision_count = catalog.revision_count


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
    """Re-read only alembic_version and recompute the state from the synced catalog.

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
        graph = graph_of(target.catalog, list(target.script_heads))
        if target.last_synced_at is None:
            _record_heads(target, db, actor)
            target.state = TargetState.UNREACHABLE if db.error else TargetState.NOT_SYNCED
            target.state_detail = db.error or "The catalog has not been synced yet: run sync_revisions."
            target.last_checked_at = timezone.now()
        else:
            _apply_state(target, graph, db, actor, note=note)
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
