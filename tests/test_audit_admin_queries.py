"""What an audit changelist costs: the same queries whatever the events, and none that must scan the table.

At a million events a page is only fast if no query grows with the table:
the date hierarchy's periods are one statement (not one probe per period),
the filters' choices one loose index scan, the count bounded or estimated.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from opsapp.models import AuditEvent

LIST_URL = "admin:opsapp_auditevent_changelist"
PAGES = [
    "",
    "?outcome__exact=refused",
    "?target_name=billing&action__exact=snapshot_failed",
    "?actor=olga&outcome__exact=success",
    "?q=warehouse",
    "?created_at__year=2025",
    "?created_at__year=2025&created_at__month=3",
    "?created_at__year=2025&created_at__month=3&created_at__day=5",
]
ACTIONS = [("heads_changed", "info"), ("snapshot_failed", "failure"), ("rollback_refused", "refused")]
TARGETS = ["shop", "billing", "warehouse"]
ACTORS = ["olga", "cron", "anton"]


def add_events(n: int, *, days: int) -> None:
    """`n` events after the last one, spread evenly over `days` days from 2025-03-01."""
    last = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    start = datetime(2025, 3, 1, 8, tzinfo=UTC)
    step = timedelta(days=days) / n
    events = []
    for i in range(n):
        seq = last + i + 1
        action, outcome = ACTIONS[seq % len(ACTIONS)]
        events.append(
            AuditEvent(
                seq=seq,
                created_at=start + step * i,
                actor=ACTORS[seq % len(ACTORS)],
                action=action,
                outcome=outcome if seq % 4 else "success",
                target_name=TARGETS[seq % len(TARGETS)],
                message=f"{action.replace('_', ' ')} on {TARGETS[seq % len(TARGETS)]} (event {seq})",
                prev_hash="0" * 64,
                hash="0" * 64,
            )
        )
    AuditEvent.objects.bulk_create(events)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE opsapp_auditevent")


def page_queries(client, query: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse(LIST_URL) + query)
    assert response.status_code == 200
    return [q["sql"] for q in captured.captured_queries]


@pytest.mark.django_db
@pytest.mark.parametrize("query", PAGES)
def test_a_changelist_runs_the_same_queries_for_ten_events_in_a_week_as_for_six_hundred_over_two_years(
    client, auditor, query
):
    client.force_login(auditor)
    add_events(10, days=7)
    few = page_queries(client, query)
    add_events(600, days=730)
    many = page_queries(client, query)
    assert len(few) == len(many), "\n".join(many)
    # session, user, 2 permission lookups, last verification, 2 cron runs, filter choices, count (2 at most),
    # rows, date bounds, periods
    assert len(many) <= 13, "\n".join(many)


@pytest.mark.django_db
@pytest.mark.parametrize("query", PAGES)
def test_no_changelist_query_needs_a_sequential_scan_of_the_audit_table(client, auditor, query):
    """With sequential scans priced out, PostgreSQL still picks one only where no index can serve the query."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL plans")
    client.force_login(auditor)
    add_events(600, days=730)
    audit_queries = [
        sql for sql in page_queries(client, query) if '"opsapp_auditevent"' in sql and not sql.startswith("EXPLAIN")
    ]
    assert audit_queries
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in audit_queries:
            cursor.execute("EXPLAIN " + sql)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan on opsapp_auditevent" not in plan, f"{sql}\n{plan}"
        cursor.execute("SET LOCAL enable_seqscan = on")


@pytest.mark.django_db
def test_a_filtered_count_far_beyond_the_exact_bound_takes_the_estimate_without_counting(monkeypatch):
    from opsapp.admin.audit import EstimatedCountPaginator

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL estimates")
    monkeypatch.setattr(EstimatedCountPaginator, "exact_limit", 20)
    add_events(300, days=30)
    qs = AuditEvent.objects.filter(outcome="refused").order_by("-seq")
    with CaptureQueriesContext(connection) as captured:
        count = EstimatedCountPaginator(qs, 100).count
    assert [q["sql"] for q in captured.captured_queries if "COUNT(" in q["sql"].upper()] == []
    assert count > 40 and qs.count_hint == count  # the estimate, left for the date hierarchy
    # Near the bound it counts, exactly below it.
    few = AuditEvent.objects.filter(outcome="refused", seq__lte=30).order_by("-seq")
    assert EstimatedCountPaginator(few, 100).count == few.count() == few.count_hint
