"""The auditor's search (`?q=` on the audit log): a pg_trgm index on PostgreSQL, plain scans on SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.contrib import admin
from django.core.checks import run_checks
from django.db import connection
from django.test import RequestFactory
from django.urls import reverse

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event
from opsapp.services.audit.search import INDEX_NAME, ensure_search_index, search_index_missing
from tests.test_audit import REPO_ROOT, offline_verifier, run_offline

LIST_URL = "admin:opsapp_auditevent_changelist"


def add(message: str, *, request_id: int | None = None, from_revision: str = "") -> AuditEvent:
    return append_event(
        action=AuditAction.HEADS_CHANGED,
        outcome=AuditOutcome.INFO,
        actor=Actor.cron(),
        target="shop",
        request_id=request_id,
        from_revision=from_revision,
        message=message,
    )


@pytest.fixture
def events():
    made = [add(f"snapshot verified on billing (event {n})") for n in range(1, 9)]
    made.append(add("downgrade of warehouse refused: dirty", request_id=77))
    made.append(add("heads changed", from_revision="ab12cd34ef56"))
    made.append(add("Warehouse EVENT 4242 taken"))
    return made


def search_sql(term: str) -> tuple[str, list]:
    """The changelist's own search query (AuditEventAdmin.get_search_results), as SQL."""
    model_admin = admin.site._registry[AuditEvent]
    request = RequestFactory().get("/", {"q": term})
    results, _ = model_admin.get_search_results(request, AuditEvent.objects.all(), term)
    sql, params = results.order_by("-seq")[:100].query.sql_with_params()
    return sql, list(params)


def plan_of(term: str) -> str:
    sql, params = search_sql(term)
    with connection.cursor() as cur:
        # A test table holds a dozen rows, where reading them all (in order, or not) is always cheapest: forbid
        # both whole-table reads to see that the search itself can be answered from an index.
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute("SET LOCAL enable_indexscan = off")
        cur.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cur.fetchall())
        cur.execute("SET LOCAL enable_seqscan = on")
        cur.execute("SET LOCAL enable_indexscan = on")
    return plan


def shown_seqs(client, term: str) -> list[int]:
    response = client.get(reverse(LIST_URL), {"q": term})
    assert response.status_code == 200
    return sorted(event.seq for event in response.context["cl"].result_list)


@pytest.mark.django_db
def test_the_migration_built_the_trigram_index():
    assert connection.vendor == "postgresql"
    with connection.cursor() as cur:
        cur.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [INDEX_NAME])
        (definition,) = cur.fetchone()
    assert "gin_trgm_ops" in definition and "upper(message)" in definition
    assert "upper((from_revision)::text)" in definition and "upper((to_revision)::text)" in definition
    assert not search_index_missing(connection)


@pytest.mark.django_db
@pytest.mark.parametrize("term", ["warehouse", "warehouse event 4242", "ab12cd", "77"])
def test_the_search_uses_the_index_not_a_sequential_scan(events, term):
    plan = plan_of(term)
    assert INDEX_NAME in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.django_db
def test_search_results_are_right(events, client, auditor):
    client.force_login(auditor)
    seqs = {e.message: e.seq for e in events}
    warehouse = [seqs["downgrade of warehouse refused: dirty"], seqs["Warehouse EVENT 4242 taken"]]
    assert shown_seqs(client, "warehouse") == sorted(warehouse)  # any case
    assert shown_seqs(client, "warehouse event 4242") == [seqs["Warehouse EVENT 4242 taken"]]  # every word
    assert shown_seqs(client, "AB12CD") == [seqs["heads changed"]]  # a revision id
    assert shown_seqs(client, "#77") == [seqs["downgrade of warehouse refused: dirty"]]  # a request id
    assert shown_seqs(client, "(event 3)") == [3]
    assert shown_seqs(client, "no such words") == []
    assert shown_seqs(client, "%") == []  # a LIKE wildcard is searched for literally
    assert shown_seqs(client, "e") == sorted(e.seq for e in events)  # shorter than a trigram still works


@pytest.mark.django_db
def test_a_role_that_may_not_create_pg_trgm_gets_a_clear_reason_and_the_console_keeps_working(events, client, auditor):
    with connection.cursor() as cur:
        cur.execute(f'DROP INDEX "{INDEX_NAME}"')
        cur.execute("DROP EXTENSION pg_trgm")
        cur.execute("CREATE ROLE ops_audit2_no_create NOLOGIN")  # no CREATE on the database
        cur.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO ops_audit2_no_create")
        cur.execute("SET LOCAL ROLE ops_audit2_no_create")
    try:
        reason = ensure_search_index(connection)
    finally:
        with connection.cursor() as cur:
            cur.execute("RESET ROLE")
    assert reason is not None
    assert "may not create the pg_trgm extension" in reason and "CREATE EXTENSION pg_trgm" in reason
    assert search_index_missing(connection)
    warnings = [m for m in run_checks(databases=["default"]) if m.id == "opsapp.W044"]
    assert len(warnings) == 1 and INDEX_NAME in warnings[0].msg

    client.force_login(auditor)
    assert shown_seqs(client, "warehouse event 4242") == [events[-1].seq]  # search scans, but answers

    # Once an administrator has created the extension, the same step builds the index.
    assert ensure_search_index(connection) is None
    assert not search_index_missing(connection)
    assert [m for m in run_checks(databases=["default"]) if m.id == "opsapp.W044"] == []


SQLITE_SCRIPT = """
import django, json
django.setup()
from django.contrib import admin
from django.test import RequestFactory
from opsapp.models import AuditEvent
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event
from opsapp.services.audit.search import ensure_search_index, search_index_missing
from django.db import connection

for n, message in enumerate(["warehouse snapshot", "billing heads", "Warehouse EVENT 4242"]):
    append_event(action="heads_changed", outcome="info", actor=Actor.cron(), target="shop", message=message,
                 detail={"n": n, "b": [1, "x"]})
model_admin = admin.site._registry[AuditEvent]
results, _ = model_admin.get_search_results(RequestFactory().get("/"), AuditEvent.objects.all(), "warehouse 4242")
print(json.dumps({"found": [e.seq for e in results], "index": ensure_search_index(connection),
                  "missing": search_index_missing(connection)}))
"""


@pytest.mark.slow
def test_sqlite_searches_and_exports_without_the_index(tmp_path):
    db = tmp_path / "console.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "DATABASE_URL": f"sqlite:///{db}",
        "DEBUG": "1",
        "SECRET_KEY": "test-secret-key-for-sqlite",
        "OPS_IGNORE_DOTENV": "1",
        "OPS_VAR_DIR": str(tmp_path),
    }
    run = {"cwd": REPO_ROOT, "env": env, "capture_output": True, "text": True, "timeout": 120}
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], **run)
    assert migrate.returncode == 0, migrate.stderr
    searched = subprocess.run([sys.executable, "-c", SQLITE_SCRIPT], **run)
    assert searched.returncode == 0, searched.stderr
    assert json.loads(searched.stdout) == {"found": [3], "index": None, "missing": False}

    export = tmp_path / "audit.csv"
    exported = subprocess.run(
        [sys.executable, "manage.py", "export_audit_log", "--format", "csv", "--output", str(export)], **run
    )
    assert exported.returncode == 0, exported.stderr
    checked = run_offline(offline_verifier(tmp_path), export)  # docs/audit.md's standard-library snippet
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 events checked; last #3" in checked.stdout, checked.stdout


@pytest.mark.django_db
def test_a_search_counts_exactly_only_up_to_a_small_bound(events, client, auditor, monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from opsapp.admin.audit import SearchCountPaginator

    monkeypatch.setattr(SearchCountPaginator, "exact_limit", 3)
    client.force_login(auditor)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(reverse(LIST_URL), {"q": "snapshot verified"})  # 8 matches
    cl = response.context["cl"]
    assert isinstance(cl.paginator, SearchCountPaginator)
    assert cl.result_count >= 4 and len(cl.result_list) == 8  # beyond the bound: the planner's estimate
    counts = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT COUNT(*)")]
    assert counts and all("LIMIT 4" in sql for sql in counts), counts
    # Without a search the list keeps the larger exact bound.
    response = client.get(reverse(LIST_URL))
    assert not isinstance(response.context["cl"].paginator, SearchCountPaginator)
    assert response.context["cl"].result_count == len(events)
