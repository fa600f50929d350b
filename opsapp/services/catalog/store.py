"""One catalog per script directory: storing revisions once, and where each target stands on them.

A `ScriptCatalog` holds the revision rows of one script directory and is
identified by a fingerprint of those facts, so it never changes once
written: every target reading the same directory points at the same rows,
and a directory that changes gets a new catalog (the old one is pruned when
no target points at it). What is applied and current is per target and
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
from typing import Any

from django.db import IntegrityError, transaction
from django.db import connection as console_db
from django.db.models import QuerySet

from opsapp.models import Revision, ScriptCatalog, Target
from opsapp.services.catalog.load import ROW_FIELDS, load_catalog, open_script_directory
from opsapp.targets import TargetConfig

BATCH = 1000
_CACHE_SIZE = 8


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


_READ: dict[str, int] = {}  # script-file fingerprint -> catalog pk, in this process
_READ_LOCKS: dict[str, threading.Lock] = {}
_READ_GUARD = threading.Lock()


def _lock_for(fingerprint: str) -> threading.Lock:
    with _READ_GUARD:
        return _READ_LOCKS.setdefault(fingerprint, threading.Lock())


def _known_catalog(fingerprint: str) -> ScriptCatalog | None:
    """A stored catalog already read from files with this fingerprint (this process or any other)."""
    pk = _READ.get(fingerprint)
    if pk is None:
        pk = (
            Target.objects.filter(script_fingerprint=fingerprint, catalog__isnull=False, sync_errors=[])
            .values_list("catalog_id", flat=True)
            .first()
        )
    return ScriptCatalog.objects.filter(pk=pk).first() if pk is not None else None


def catalog_for(config: TargetConfig, fingerprint: str, *, force: bool = False) -> CatalogRead:
    """The catalog of `config`'s script directory, whose files have script-file `fingerprint`.

    Reuses the catalog of a directory already read with the same fingerprint
    (several targets sharing one alembic_ini read it once); otherwise imports
    the migration files (`load_catalog`) and stores the result. `force`
    always re-reads. Never raises for a broken directory: its errors are returned.
    """
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
        catalog = store_catalog(loaded.rows, loaded.heads, directory)
        _READ[fingerprint] = catalog.pk
        return CatalogRead(catalog=catalog, reread=True)


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
        for key in [key for key, pk in _READ.items() if pk in orphans]:
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


_GRAPHS: OrderedDict[int, Graph] = OrderedDict()
_GRAPHS_LOCK = threading.Lock()


def graph_of(catalog_id: int | None, heads: list[str] | None = None) -> Graph:
    """The parent graph of catalog `catalog_id` (empty for None), cached: a catalog never changes."""
    if catalog_id is None:
        return Graph(parents={}, heads=list(heads or []))
    with _GRAPHS_LOCK:
        cached = _GRAPHS.get(catalog_id)
        if cached is not None:
            _GRAPHS.move_to_end(catalog_id)
    if cached is None:
        rows = {
            values["revision"]: values
            for values in Revision.objects.filter(catalog_id=catalog_id)
            .order_by()
            .values("revision", "down_revisions", "depends_on", "branch_labels")
        }
        cached = Graph.from_rows(rows, [])
        with _GRAPHS_LOCK:
            _GRAPHS[catalog_id] = cached
            while len(_GRAPHS) > _CACHE_SIZE:
                _GRAPHS.popitem(last=False)
    return Graph(parents=cached.parents, heads=list(heads if heads is not None else cached.heads))


def position_of(target: Target) -> tuple[set[str], set[str]]:
    """(applied, current) revisions of `target`, from its last seen heads on its catalog.

    Applied: the known heads and all their ancestors (dependencies count);
    current: what alembic_version held. The sync stored nothing else per target.
    """
    heads = list(target.current_heads or [])
    graph = graph_of(target.catalog_id)
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
