"""db_worker: django-tasks-db's worker, which first reconciles operations whose worker died.

Every option is django-tasks-db's (`--batch` runs what is queued and exits,
`--max-tasks`, `--interval`, `--worker-id`, ...). Several workers on several
hosts share the queue; each job is claimed with SELECT ... FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

from django_tasks_db.management.commands.db_worker import Command as DBWorkerCommand

from opsapp.services.actors import Actor
from opsapp.services.operations import liveness
from opsapp.services.operations.reconcile import reconcile_operations


class Command(DBWorkerCommand):
    help = DBWorkerCommand.help + " Operations left running by a dead worker are marked interrupted first."

    def handle(self, *args, **options) -> None:
        for op in reconcile_operations(actor=Actor(username="worker")):
            self.stderr.write(f"Operation #{op.pk}: {op.error}")
        # One connection for the liveness locks of every job this worker runs (not one per job).
        with liveness.session():
            super().handle(*args, **options)
