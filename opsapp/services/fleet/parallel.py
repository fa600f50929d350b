"""Sync many targets at once: confirm the unchanged ones in bulk, `catalog.sync.sync_target` the rest.

The cron re-sync of a fleet mostly finds nothing changed. For those targets
`confirm_unchanged` costs one connection and one `SELECT version_num FROM
alembic_version` each (psycopg, `jobs` at a time), one fingerprint per
script directory (file names, sizes and mtimes; no migration file is
imported) and two queries on the console's database for all of them; no
revision row is written. Every other target (new, changed scripts or heads,
a problem state, a read that failed) goes through `sync_target`.

Reading alembic_version is I/O-bound, so threads overlap the waits; a
target that is down or slow costs one worker at most OPS_CONNECT_TIMEOUT_SECONDS
(connect) or OPS_READ_TIMEOUT_SECONDS (a locked alembic_version) per read and
is recorded unreachable, while the other workers go on. Each sync_target
worker thread has its own Django connection (Django's connections are per
thread), closed when its target is done, and opens its own target connections.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from django.db import connections, transaction
from django.utils import timezone

from opsapp.models import Target
from opsapp.services.actors import Actor
from opsapp.services.catalog.sync import (
    DbRead,
    _nothing_changed,
    mirrored_fields,
    read_current_heads,
    script_fingerprint,
    sync_target,
)
from opsapp.services.errors import OpsError
from opsapp.services.fleet.versions import read_many
from opsapp.targets import TargetConfig, get_target

MAX_JOBS = 64


def _unchanged_before_reading(target: Target) -> bool:
    """Could `target` be unchanged? (the same test sync_target makes, on the heads stored last time)."""
    return _nothing_changed(target, None, None, DbRead(heads=list(target.current_heads)))


def _fingerprints(configs: list[TargetConfig]) -> dict[Path, str | None]:
    """One fingerprint per script directory (by alembic.ini), None when it cannot be read."""
    result: dict[Path, str | None] = {}
    for config in configs:
        if config.alembic_ini not in result:
            try:
                result[config.alembic_ini] = script_fingerprint(config)
            except OpsError:
                result[config.alembic_ini] = None
    return result


def confirm_unchanged(names: list[str], *, jobs: int = 1) -> dict[str, Target]:
    """The targets among `names` whose scripts and alembic_version did not move since their last sync.

    Their last_synced_at and last_checked_at are set to now (one UPDATE);
    nothing else is written. A target that changed, is new, is in a problem
    state, could not be read, or is being synced by someone else right now
    (its row is locked) is left out: the caller syncs it in full. Never raises
    for an unreachable target.
    """
    stored = {t.name: t for t in Target.objects.filter(name__in=names)}
    configs: dict[str, TargetConfig] = {}
    ini_cache: dict = {}  # each alembic.ini is read once, not once per target
    for name in names:
        target = stored.get(name)
        if target is None or not _unchanged_before_reading(target):
            continue
        try:
            config = get_target(name, ini_cache=ini_cache)
        except OpsError:
            continue
        # Tags, URL or alembic.ini changed in the configuration: sync_target mirrors them.
        if any(getattr(target, key) != value for key, value in mirrored_fields(name).items()):
            continue
        configs[name] = config
    fingerprints = _fingerprints(list(configs.values()))
    candidates = [
        config
        for name, config in configs.items()
        if fingerprints[config.alembic_ini] and fingerprints[config.alembic_ini] == stored[name].script_fingerprint
    ]
    reads = read_many(candidates, jobs=jobs, reader=read_current_heads)
    same = [
        name for name, heads in reads.items() if isinstance(heads, list) and heads == sorted(stored[name].current_heads)
    ]
    if not same:
        return {}
    now = timezone.now()
    with transaction.atomic():
        # skip_locked: a target another process is syncing now is left to the full path, never waited for.
        locked = Target.objects.select_for_update(skip_locked=True).filter(name__in=same).order_by("pk")
        confirmed = [
            target
            for target in locked
            if target.script_fingerprint == fingerprints[configs[target.name].alembic_ini]
            and _nothing_changed(target, None, None, DbRead(heads=reads[target.name]))
        ]
        Target.objects.filter(pk__in=[t.pk for t in confirmed]).update(last_synced_at=now, last_checked_at=now)
    for target in confirmed:
        target.last_synced_at = target.last_checked_at = now
        target.catalog_reread = False
    return {target.name: target for target in confirmed}


def _sync_one(name: str, actor: Actor | None, force: bool) -> Target:
    try:
        return sync_target(name, actor=actor, force=force)
    finally:
        # A pool thread's Django connection would otherwise stay open until the process exits.
        connections.close_all()


def sync_targets(
    names: list[str],
    *,
    actor: Actor | None = None,
    force: bool = False,
    jobs: int = 1,
    progress: Callable[[Target], None] | None = None,
) -> list[Target]:
    """Sync each of `names`, `jobs` at a time; the Targets in the order of `names`.

    Unless `force`, the unchanged targets are confirmed in bulk first
    (`confirm_unchanged`); the others go through sync_target. `progress` is
    called with each Target as it finishes (in completion order, from the
    calling thread). jobs=1 syncs in the calling thread. Raises
    TargetNotConfigured (from the first such name) after the others
    finished; never raises for an unreachable target.
    """
    jobs = max(1, min(jobs, MAX_JOBS, len(names) or 1))
    done = {} if force else confirm_unchanged(names, jobs=jobs)
    if progress:
        for name in names:
            if name in done:
                progress(done[name])
    rest = [name for name in names if name not in done]
    jobs = max(1, min(jobs, len(rest) or 1))
    if jobs == 1:
        for name in rest:
            done[name] = sync_target(name, actor=actor, force=force)
            if progress:
                progress(done[name])
        return [done[name] for name in names]
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ops-sync") as pool:
        futures = {name: pool.submit(_sync_one, name, actor, force) for name in rest}
        if progress:
            for future in as_completed(futures.values()):
                if future.exception() is None:
                    progress(future.result())
        for name, future in futures.items():
            done[name] = future.result()
    return [done[name] for name in names]
