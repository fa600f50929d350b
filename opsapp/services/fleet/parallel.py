"""Sync many targets at once: a bounded thread pool over `catalog.sync.sync_target`.

Reading alembic_version is I/O-bound, so threads overlap the waits; a
target that is down or slow costs one worker at most OPS_CONNECT_TIMEOUT_SECONDS
(connect) or OPS_READ_TIMEOUT_SECONDS (a locked alembic_version) and is
recorded unreachable, while the other workers go on. Each worker thread has
its own Django connection (Django's connections are per thread), closed
when its target is done, and opens its own target connections.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from django.db import connections

from opsapp.models import Target
from opsapp.services.actors import Actor
from opsapp.services.catalog.sync import sync_target

MAX_JOBS = 64


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
    """sync_target for each of `names`, `jobs` at a time; the Targets in the order of `names`.

    `progress` is called with each Target as it finishes (in completion
    order, from the calling thread). jobs=1 syncs in the calling thread, as
    before. Raises TargetNotConfigured (from the first such name) after the
    others finished; never raises for an unreachable target.
    """
    jobs = max(1, min(jobs, MAX_JOBS, len(names) or 1))
    if jobs == 1:
        results = []
        for name in names:
            target = sync_target(name, actor=actor, force=force)
            if progress:
                progress(target)
            results.append(target)
        return results
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ops-sync") as pool:
        futures = {name: pool.submit(_sync_one, name, actor, force) for name in names}
        if progress:
            for future in as_completed(futures.values()):
                if future.exception() is None:
                    progress(future.result())
        return [futures[name].result() for name in names]
