"""Running queued operations from a test that holds the console database in its own transaction.

A `django_db` test (not `transaction=True`) keeps its rows uncommitted, so a
worker subprocess cannot see them. `run_queued_jobs` runs django-tasks-db's
own worker code in this process: the same ready() query, the same
SELECT ... FOR UPDATE SKIP LOCKED claim and the same `Worker.run_task` as
`manage.py db_worker --batch`, without the loop's `close_old_connections()`
(which would drop the test's transaction). Tests with real worker processes
are in tests/test_operations_workers.py.
"""

from __future__ import annotations


def run_queued_jobs() -> int:
    """Run every ready job once, oldest first; return how many ran."""
    from django_tasks_db.management.commands.db_worker import Worker
    from django_tasks_db.models import DBTaskResult

    worker = Worker(
        queue_names=["default"],
        interval=0,
        batch=True,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id="test-worker",
        excluded_queue_names=[],
    )
    ran = 0
    while (job := DBTaskResult.objects.ready().filter(backend_name="default").get_locked()) is not None:
        job.claim(worker.worker_id)
        worker.run_task(job)
        ran += 1
    return ran


def worker_env(settings, **extra: str) -> dict[str, str]:
    """The environment of a `manage.py db_worker` child that sees this test's console DB, targets and snapshots."""
    import os

    from django.db import connection

    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "console.settings_test",
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
            "SECRET_KEY": settings.SECRET_KEY,
            "OPS_SNAPSHOT_DIR": str(settings.OPS_SNAPSHOT_DIR),
            "OPS_TARGETS": ",".join(settings.OPS_TARGETS),
            "OPS_HEARTBEAT_SECONDS": "0.3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name, target in settings.OPS_TARGETS.items():
        env[f"OPS_TARGET_{name.upper()}_URL"] = target["URL"]
        env[f"OPS_TARGET_{name.upper()}_ALEMBIC_INI"] = str(target["ALEMBIC_INI"])
        env[f"OPS_TARGET_{name.upper()}_ISOLATION_LEVEL"] = target.get("ISOLATION_LEVEL", "SERIALIZABLE")
    env.update(extra)
    return env


def start_worker(env: dict[str, str], *args: str, split_output: bool = False):
    """A real `manage.py db_worker` process (polling every 0.2 s); the caller stops it.

    Its stderr joins stdout, unless `split_output` keeps them apart (for `communicate()` -> out, err).
    """
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, str(root / "manage.py"), "db_worker", "--no-reload", "--no-startup-delay"]
        + ["--interval", "0.2", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if split_output else subprocess.STDOUT,
        text=True,
    )


def stop_worker(proc) -> str:
    """SIGTERM (the worker finishes its job and exits), then its output."""
    import subprocess

    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def wait_until_finished(operation_id: int, timeout: float = 120) -> object:
    """The Operation once it is no longer queued or running (AssertionError after `timeout`)."""
    import time

    from opsapp.models import ACTIVE_STATES, Operation

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = Operation.objects.get(pk=operation_id)
        if op.state not in ACTIVE_STATES:
            return op
        time.sleep(0.1)
    raise AssertionError(f"operation #{operation_id} still {op.state} after {timeout} s")


def fill_big_table(url: str, rows: int = 200_000) -> None:
    """Random text that does not compress, so that pg_dump of `url` takes several seconds."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE filler AS SELECT g AS id, "
            "(SELECT string_agg(md5(random()::text || g::text || s::text), '') FROM generate_series(1, 12) s) AS body "
            "FROM generate_series(1, %s) g",
            (rows,),
        )


def mailed_by_worker(directory) -> list:
    """The messages a worker child wrote with OPS_TEST_MAIL_DIR=`directory`, oldest first (.to, .subject, .body)."""
    import email
    from email import policy
    from pathlib import Path
    from types import SimpleNamespace

    messages = []
    for path in sorted(Path(directory).glob("*.log"), key=lambda p: (p.stat().st_mtime_ns, p.name)):
        for chunk in path.read_bytes().split(b"\n" + b"-" * 79 + b"\n"):
            if not chunk.strip():
                continue
            message = email.message_from_bytes(chunk, policy=policy.default)
            body = message.get_body(preferencelist=("plain",))
            messages.append(
                SimpleNamespace(
                    to=[a.strip() for a in str(message["To"] or "").split(",") if a.strip()],
                    subject=str(message["Subject"] or ""),
                    body=body.get_content() if body is not None else "",
                )
            )
    return messages
