"""The task the queue runs. Django 6: replace `django_tasks` with `django.tasks` in the import.

Only the Operation's id is enqueued. Everything else (target, request,
snapshot, who asked) is read from the console's own tables by the worker;
a verification code or a password never enters the queue table.
"""

from __future__ import annotations

from django_tasks import task


@task()
def run_operation(operation_id: int) -> str:
    """Run Operation `operation_id` in this worker; returns its final state."""
    from opsapp.services.operations.worker import run

    return run(operation_id)
