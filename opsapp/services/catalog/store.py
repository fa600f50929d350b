"""One catalog per script directory: storing revisions once, and where each target stands on them.

A `ScriptCatalog` holds the revision rows of one script directory and is
identified by a fingerprint of those facts: every target reading the same
directory points at the same rows. A directory that changes updates its
catalog in place (unchanged rows keep their ids, so revision pages keep their
URLs) when only targets of that directory read it; otherwise it gets a
catalog of its own, and a catalog no target points at is pruned. What is applied and current is per target and
derived from its own heads (`Target.current_heads`, what its alembic_version
held at the last look): `position_of` and `revisions_of`.

`catalog_for` reads a directory at most once per process and script-file
fingerprint, however many targets (or pool threads) ask for it at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db import connection as console_db
from django.db.models import QuerySet

from opsapp.models import Revision, ScriptCatalog, Target

if TYPE_CHECKING:
    from opsapp.targets import TargetConfig

BATCH = 1000
_CACHE_SIZE = 8
# The facts a catalog row stores besides its id (load.load_catalog fills them). Pages import this
# module (revision pages, the cold preview): it must not import Alembic or SQLAlchemy.
ROW_FIELDS = (
    "down_revisions",
    "branch_labels",
    "branch_labels_text",
    "depends_on",
    "message",
    "docstring",
    "create_date",
    "path",
    "position",
    "is_head",
    "is_base",
    "is_branch_point",
    "is_merge_point",
)


def facts_fingerprint(rows: dict[str, dict[str, Any]], heads: list[str]) -> str:
    """sha256 hex over the revision facts (every ROW_FIELDS value of every revision, and the heads).

    Migration 0017 computes the same digest for the rows it moves; keep the two in step.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(heads)).encode())
    for rev in sorted(rows):
        facts = {name: rows[rev][name] for name in ROW_FIELDS}
        digest.update(b"\n" + json.dumps([rev, facts], sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _analyze_revisions() -> None:
    """Refresh PostgreSQL's statistics of the revision table (after a bulk insert they are stale:
    the changelist's plan would be chosen on row estimates from before the sync)."""
    if console_db.vendor == "postgresql":
        with console_db.cursor() as cursor:
            cursor.execute(f"ANALYZE {console_db.ops.quote_name(Revision._meta.db_table)}")


def store_catalog(rows: dict[str, dict[str, Any]], heads: list[str], directory: str = "") -> ScriptCatalog:
    """The catalog holding exactly these facts, created (with its rows, in batches) if none does yet.

    Safe to overlap: two processes storing the same facts end with one catalog.
    """
    fingerprint = facts_fingerprint(rows, heads)
    existing = ScriptCatalog.objects.filter(fingerprint=fingerprint).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            catalog = ScriptCatalog.objects.create(
                fingerprint=fingerprint, directory=directory[:1000], heads=list(heads), revision_count=len(rows)
            )
            Revision.objects.bulk_create(
                [
                    Revision(catalog=catalog, revision=rev, **{k: row[k] for k in ROW_FIELDS})
                    for rev, row in rows.items()
                ],
                batch_size=BATCH,
            )
            if len(rows) >= BATCH:
                transaction.on_commit(_analyze_revisions)
    except IntegrityError:
        # Another process stored the same facts first: use its catalog.
        return ScriptCatalog.objects.get(fingerprint=fingerprint)
    return catalog


@dataclass
class CatalogRead:
    """What `catalog_for` found: a catalog, or the errors that kept the directory from loading."""

    catalog: ScriptCatalog | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    reread: bool = False  # whether this call imported the migration files


_READ: dict[str, tuple[int, str]] = {}  # script-file fingerprint -> (catalog pk, facts fingerprint), this process
_READ_LOCKS: dict[str, threading.Lock] = {}
_READ_GUARD = threading.Lock()


def _lock_for(fingerprint: str) -> threading.Lock:
    with _READ_GUARD:
        return _READ_LOCKS.setdefault(fingerprint, threading.Lock())


def _known_catalog(fingerprint: str) -> ScriptCatalog | None:
    """A stored catalog already read from files with this fingerprint (this process or any other)."""
    remembered = _READ.get(fingerprint)
    if remembered is not None:
        # Both must match: the catalog may have been pruned, or updated in place since.
        found = ScriptCatalog.objects.filter(pk=remembered[0], fingerprint=remembered[1]).first()
        if found is not None:
            return found
    pk = (
        Target.objects.filter(script_fingerprint=fingerprint, catalog__isnull=False, sync_errors=[])
        .values_list("catalog_id", flat=True)
        .first()
    )
    return ScriptCatalog.objects.filter(pk=pk).first() if pk is not None else None


def catalog_for(
    config: TargetConfig, fingerprint: str, *, force: bool = False, previous: int | None = None
) -> CatalogRead:
    """The catalog of `config`'s script directory, whose files have script-file `fingerprint`.

    Reuses the catalog of a directory already read with the same fingerprint
    (several targets sharing one alembic_ini read it once); otherwise imports
    the migration files (`load_catalog`) and stores the result: into the
    target's `previous` catalog when only targets of the same alembic_ini
    read it (the directory changed: rows are updated in place, so revision
    pages keep their URLs), else as a catalog of its own (or the existing one
    with the same facts). `force` always re-reads. Never raises for a broken
    directory: its errors are returned.
    """
    from opsapp.services.catalog.load import load_catalog, open_script_directory  # imports Alembic

    with _lock_for(fingerprint):
        if not force:
            known = _known_catalog(fingerprint)
            if known is not None:
                return CatalogRead(catalog=known)
        loaded = load_catalog(config)
        if loaded.errors:
            return CatalogRead(errors=loaded.errors, reread=True)
        try:
            directory = str(open_script_directory(config).dir)
        except Exception:  # noqa: BLE001 - only a label; load_catalog just opened it
            directory = ""
        catalog = None
        if previous is not None and _only_read_through(previous, str(config.alembic_ini)):
            catalog = _evolve(previous, loaded.rows, loaded.heads, directory)
        if catalog is None:
            catalog = store_catalog(loaded.rows, loaded.heads, directory)
        _READ[fingerprint] = (catalog.pk, catalog.fingerprint)
        return CatalogRead(catalog=catalog, reread=True)


def _only_read_through(catalog_id: int, alembic_ini: str) -> bool:
    """True when every target on catalog `catalog_id` is configured with `alembic_ini` (one directory)."""
    inis = set(Target.objects.filter(catalog_id=catalog_id).values_list("alembic_ini", flat=True))
    return inis <= {alembic_ini[:1000]}


def _evolve(catalog_id: int, rows: dict[str, dict[str, Any]], heads: list[str], directory: str) -> ScriptCatalog | None:
    """Update catalog `catalog_id` in place to hold `rows` (batched create/update/delete; unchanged rows
    keep their ids). None when it is gone, or when another catalog already holds these facts."""
    fingerprint = facts_fingerprint(rows, heads)
    if ScriptCatalog.objects.filter(fingerprint=fingerprint).exclude(pk=catalog_id).exists():
        return None
    try:
        with transaction.atomic():
            catalog = ScriptCatalog.objects.select_for_update().filter(pk=catalog_id).first()
            if catalog is None:
                return None
            if catalog.fingerprint == fingerprint:
                return catalog
            changed = _upsert_rows(catalog, rows)
            catalog.fingerprint = fingerprint
            catalog.heads = list(heads)
            catalog.revision_count = len(rows)
            catalog.directory = directory[:1000]
            catalog.save(update_fields=["fingerprint", "heads", "revision_count", "directory"])
            if changed >= BATCH:
                transaction.on_commit(_analyze_revisions)
    except IntegrityError:
        return None
    return catalog


def _upsert_rows(catalog: ScriptCatalog, rows: dict[str, dict[str, Any]]) -> int:
    """Create, update and delete `catalog`'s rows in batches; no per-row queries. How many rows changed."""
    existing = {
        values["revision"]: values
        for values in Revision.objects.filter(catalog=catalog).values("id", "revision", *ROW_FIELDS)
    }
    to_create, to_update = [], []
    for rev, row in rows.items():
        wanted = {name: row[name] for name in ROW_FIELDS}
        old = existing.get(rev)
        if old is None:
            to_create.append(Revision(catalog=catalog, revision=rev, **wanted))
        elif any(old[name] != wanted[name] for name in ROW_FIELDS):
            to_update.append(Revision(id=old["id"], catalog=catalog, revision=rev, **wanted))
    gone = [values["id"] for rev, values in existing.items() if rev not in rows]
    for start in range(0, len(gone), BATCH):
        Revision.objects.filter(id__in=gone[start : start + BATCH]).delete()
    Revision.objects.bulk_create(to_create, batch_size=BATCH)
    Revision.objects.bulk_update(to_update, ROW_FIELDS, batch_size=250)
    return len(gone) + len(to_create) + len(to_update)


def prune_catalogs(pks: list[int | None]) -> int:
    """Delete those of catalogs `pks` that no target points at any more; how many were deleted."""
    wanted = [pk for pk in pks if pk is not None]
    if not wanted:
        return 0
    orphans = list(ScriptCatalog.objects.filter(pk__in=wanted, targets__isnull=True).values_list("pk", flat=True))
    if not orphans:
        return 0
    with transaction.atomic():
        Revision.objects.filter(catalog_id__in=orphans).delete()
        ScriptCatalog.objects.filter(pk__in=orphans, targets__isnull=True).delete()
    with _READ_GUARD:
        for key in [key for key, (pk, _) in _READ.items() if pk in orphans]:
            del _READ[key]
    return len(orphans)


# ------------------------------------------------------------ where a target stands
@dataclass
class Graph:
    """Parents of every revision (down revisions plus resolved depends_on), from rows or a fresh load."""

    parents: dict[str, tuple[str, ...]]
    heads: list[str]

    @classmethod
    def from_rows(cls, rows: dict[str, dict[str, Any]], heads: list[str]) -> Graph:
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


_GRAPHS: OrderedDict[tuple[int, str], Graph] = OrderedDict()
_GRAPHS_LOCK = threading.Lock()


def graph_of(catalog: ScriptCatalog | None, heads: list[str] | None = None) -> Graph:
    """The parent graph of `catalog` (empty for None), cached per catalog and facts fingerprint."""
    if catalog is None:
        return Graph(parents={}, heads=list(heads or []))
    key = (catalog.pk, catalog.fingerprint)
    with _GRAPHS_LOCK:
        cached = _GRAPHS.get(key)
        if cached is not None:
            _GRAPHS.move_to_end(key)
    if cached is None:
        rows = {
            values["revision"]: values
            for values in Revision.objects.filter(catalog=catalog)
            .order_by()
            .values("revision", "down_revisions", "depends_on", "branch_labels")
        }
        cached = Graph.from_rows(rows, list(catalog.heads))
        with _GRAPHS_LOCK:
            _GRAPHS[key] = cached
            while len(_GRAPHS) > _CACHE_SIZE:
                _GRAPHS.popitem(last=False)
    return Graph(parents=cached.parents, heads=list(heads if heads is not None else cached.heads))


def catalog_key(target: Target) -> tuple[int | None, str]:
    """What a cache of anything computed from `target`'s rows is keyed by: (catalog id, facts fingerprint)."""
    catalog = target.catalog
    return (catalog.pk, catalog.fingerprint) if catalog is not None else (None, "")


def position_of(target: Target) -> tuple[set[str], set[str]]:
    """(applied, current) revisions of `target`, from its last seen heads on its catalog.

    Applied: the known heads and all their ancestors (dependencies count);
    current: what alembic_version held. The sync stored nothing else per target.
    """
    heads = list(target.current_heads or [])
    graph = graph_of(target.catalog)
    return graph.ancestors([rev for rev in heads if rev in graph.parents]), set(heads)


def revisions_of(target: Target, queryset: QuerySet[Revision] | None = None) -> list[Revision]:
    """`target`'s revision rows (all, or those of `queryset`) with per-target `applied` and `is_current` set."""
    if target.catalog_id is None:
        return []
    rows = queryset if queryset is not None else Revision.objects.all()
    rows = list(rows.filter(catalog_id=target.catalog_id))
    annotate(rows, target)
    return rows


def annotate(rows: list[Revision], target: Target | None) -> None:
    """Set `applied` and `is_current` on `rows` as seen from `target` (None: both unknown, False)."""
    applied, current = position_of(target) if target is not None else (set(), set())
    for row in rows:
        row.applied = row.revision in applied
        row.is_current = row.revision in current
