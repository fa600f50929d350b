"""The snapshot's progress total and ETA are honest (issue 13): estimated from the target's own earlier dumps.

`pg_dump -Fc` compresses, so an archive ends far below `pg_database_size`;
a bar against the database's size would stop short and its ETA would be
too long. The real dump's figures are in tests/test_operations_workers.py.
"""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from rollback_fixtures import operator_actor

from opsapp.models import Operation, OperationKind, Snapshot, Target

pytest_plugins = ["rollback_fixtures"]
pytestmark = pytest.mark.django_db

MB = 1 << 20


def snapshot_row(target: Target, *, size: int, database_size: int | None, status: str = "verified") -> Snapshot:
    return Snapshot.objects.create(target=target, status=status, size=size, database_size=database_size)


def test_the_final_size_is_estimated_from_the_newest_earlier_snapshot_of_the_same_target():
    from opsapp.services.snapshots.estimate import estimate_dump_size

    target, other = Target.objects.create(name="t1"), Target.objects.create(name="t2")
    snapshot_row(other, size=90 * MB, database_size=100 * MB)  # another target's ratio does not count
    snapshot_row(target, size=10 * MB, database_size=100 * MB)
    newest = snapshot_row(target, size=25 * MB, database_size=100 * MB)
    snapshot_row(target, size=1, database_size=100 * MB, status="failed")  # a failed one does not count
    estimate = estimate_dump_size(target, 200 * MB)
    assert estimate.total == 50 * MB
    assert f"snapshot #{newest.pk}" in estimate.basis and "25%" in estimate.basis


def test_without_an_earlier_snapshot_the_database_size_is_the_total_as_an_upper_bound():
    from opsapp.services.snapshots.estimate import UPPER_BOUND, estimate_dump_size

    target = Target.objects.create(name="t1")
    snapshot_row(target, size=5 * MB, database_size=None)  # taken before sizes were recorded
    first = estimate_dump_size(target, 200 * MB)
    assert first.total == 200 * MB and first.basis.startswith(UPPER_BOUND)
    assert "no earlier snapshot" in first.basis
    unknown = estimate_dump_size(target, None)  # not even the database's size: no made-up total
    assert unknown.total is None and "no earlier snapshot" in unknown.basis


def test_the_eta_runs_from_the_start_of_the_dump_not_from_the_wait_for_the_lock(rollback_env, operator):
    from opsapp.services.operations.queue import create_operation, eta_seconds

    now = timezone.now()
    op = create_operation(OperationKind.SNAPSHOT, rollback_env.name, actor=operator_actor(operator))
    Operation.objects.filter(pk=op.pk).update(
        state="running",
        started_at=now - timedelta(seconds=1000),  # 990 s of them waiting for another operation's lock
        progress_since=now - timedelta(seconds=10),
        progress_done=25 * MB,
        progress_total=100 * MB,
        progress_estimate="estimated from snapshot #1",
    )
    op.refresh_from_db()
    assert eta_seconds(op, now=now) == 30  # 25 MB in 10 s: 75 MB more take 30 s (not 3000 s)
    op.progress_done = 120 * MB  # the dump outgrew its estimate: no figure rather than a wrong one
    assert eta_seconds(op, now=now) is None


def test_the_operation_page_says_the_total_and_the_time_left_are_estimates(client, rollback_env, operator):
    from opsapp.services.operations.queue import create_operation

    op = create_operation(OperationKind.SNAPSHOT, rollback_env.name, actor=operator_actor(operator))
    page_url = reverse("admin:opsapp_operation_change", args=[op.pk])
    Operation.objects.filter(pk=op.pk).update(
        state="running",
        started_at=timezone.now() - timedelta(seconds=60),
        progress_since=timezone.now() - timedelta(seconds=20),
        progress_done=10 * MB,
        progress_total=40 * MB,
        progress_estimate="estimated from snapshot #7, whose archive was 31% of the database's size",
    )
    client.force_login(operator)
    page = html.unescape(client.get(page_url).content.decode()).replace("\xa0", " ")
    assert "10.0 MB written of about 40.0 MB (25%)" in page
    assert "s left (an estimate at the rate so far)" in page
    assert "Final size estimated from snapshot #7, whose archive was 31% of the database's size." in page
    Operation.objects.filter(pk=op.pk).update(
        progress_total=None,
        progress_estimate="no earlier snapshot of this target to estimate the dump's final size from",
    )
    page = html.unescape(client.get(page_url).content.decode()).replace("\xa0", " ")
    assert "10.0 MB written" in page and "(25%)" not in page
    assert "time left unknown: no earlier snapshot of this target" in page
    Operation.objects.filter(pk=op.pk).update(
        progress_total=40 * MB,
        progress_estimate="an upper bound: the database's size, since no earlier snapshot of this target tells",
    )
    page = html.unescape(client.get(page_url).content.decode()).replace("\xa0", " ")
    assert "10.0 MB written of at most 40.0 MB (25%)" in page
    assert "at most " in page and "s left (an estimate at the rate so far)" in page
