"""The jobs section's processes, run with the section's own environment (never by hand).

    python bench/jobs_child.py worker <ready-file> <interval>   a db_worker, warmed up, then ready
    python bench/jobs_child.py enqueue <count> <targets>        queue sync jobs, held; print their ids
    python bench/jobs_child.py latency <samples> <targets>      one job at a time; print the operation ids

`worker` is `manage.py db_worker` (the console's, reconcile first) run
through `call_command`, after the imports and the connection a worker's
first job would otherwise pay; it writes <ready-file> when it is about to
poll. With OPS_BENCH_WORKER_PROFILE=<dir> it runs under cProfile (CPU time) and dumps
`<dir>/worker-<pid>.prof` when it exits (SIGTERM ends an idle worker).

`enqueue` holds the jobs it queued (their queue rows get a `run_after` a day
ahead, in the same transaction), so the bench can start the workers, wait
until they are idle, and release every job at once.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")


def worker(ready_file: str, interval: str) -> None:
    import cProfile

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    # What the first job would import (the task module, its runners, Alembic, SQLAlchemy): a started
    # worker has paid this long before a burst of jobs arrives.
    import opsapp.services.operations.runners  # noqa: F401
    import opsapp.services.operations.tasks  # noqa: F401

    connection.ensure_connection()
    profile_dir = os.environ.get("OPS_BENCH_WORKER_PROFILE")
    # CPU time, not wall time: on a busy machine wall time is mostly waiting for a core.
    profiler = cProfile.Profile(time.process_time) if profile_dir else None
    Path(ready_file).write_text(str(os.getpid()))
    try:
        if profiler:
            profiler.enable()
        call_command("db_worker", reload=False, startup_delay=False, interval=float(interval), verbosity=0)
    finally:
        if profiler:
            profiler.disable()
            profiler.dump_stats(str(Path(profile_dir) / f"worker-{os.getpid()}.prof"))


def enqueue(count: str, targets: str) -> None:
    import django

    django.setup()
    from django.db import transaction
    from django.utils import timezone
    from django_tasks_db.models import DBTaskResult

    from opsapp.models import OperationKind
    from opsapp.services.actors import Actor
    from opsapp.services.operations.queue import create_operation

    actor = Actor(username="bench")
    names = targets.split(",")
    with transaction.atomic():
        ops = [create_operation(OperationKind.SYNC, names[i % len(names)], actor=actor) for i in range(int(count))]
        DBTaskResult.objects.filter(id__in=[op.task_id for op in ops]).update(
            run_after=timezone.now() + timezone.timedelta(days=1)
        )
    queue = DBTaskResult._meta.db_table
    print(json.dumps({"operations": [op.pk for op in ops], "tasks": [op.task_id for op in ops], "queue_table": queue}))


def latency(samples: str, targets: str) -> None:
    """Queue one sync, wait for its end, pause a random fraction of a second (so enqueues fall at any
    phase of the worker's poll), repeat."""
    import django

    django.setup()
    from opsapp.models import ACTIVE_STATES, Operation, OperationKind
    from opsapp.services.actors import Actor
    from opsapp.services.operations.queue import enqueue as enqueue_operation

    actor = Actor(username="bench")
    names = targets.split(",")
    rng = random.Random(13)
    ids = []
    for i in range(int(samples)):
        op = enqueue_operation(OperationKind.SYNC, names[i % len(names)], actor=actor)
        ids.append(op.pk)
        while Operation.objects.filter(pk=op.pk, state__in=ACTIVE_STATES).exists():
            time.sleep(0.02)
        time.sleep(rng.random() * 0.3)
    print(json.dumps({"operations": ids}))


if __name__ == "__main__":
    verb, *args = sys.argv[1:]
    {"worker": worker, "enqueue": enqueue, "latency": latency}[verb](*args)
