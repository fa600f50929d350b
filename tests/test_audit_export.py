"""The CSV export on PostgreSQL is COPY itself: same values as the Python writer, streamed, interruptible."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit import export as audit_export
from opsapp.services.audit.chain import EXPORT_FIELDS
from opsapp.services.audit.log import append_event
from tests.test_audit import offline_verifier, run_offline


def add_odd_events() -> None:
    """Events with every awkward value: NULLs and empty strings, quotes, newlines, unicode, nested JSON."""
    append_event(
        action=AuditAction.HEADS_CHANGED,
        outcome=AuditOutcome.INFO,
        actor=Actor.cron(),
        target="",
        message="",
        detail={},
    )
    append_event(
        action=AuditAction.ROLLBACK_REQUESTED,
        outcome=AuditOutcome.SUCCESS,
        actor=Actor(username="olga", user_id=3, client_ip="2001:db8::1", user_agent='Agent "x", y'),
        target="shop",
        request_id=12,
        snapshot_id=4,
        from_revision="a1,b2",
        to_revision="c3",
        message='line one\nline "two", with ünïcode\r\nand a comma\tand a tab \\ backslash',
        detail={"zeta": [1, 2.5, None, True], "a": {"nested": "ö"}, "bb": "", "big": 10**20, "ratio": 0.1},
    )
    append_event(
        action=AuditAction.SNAPSHOT_TAKEN,
        outcome=AuditOutcome.SUCCESS,
        actor=Actor(username="anton", user_id=4, client_ip="10.0.0.7"),
        target="billing",
        snapshot_id=5,
        message="snapshot taken",
        detail={"bytes": 1234},
    )


def parsed(text: str) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    for row in rows:
        row["detail"] = json.loads(row["detail"])
    return rows


@pytest.mark.django_db
def test_copy_export_carries_the_same_values_as_the_python_writer(tmp_path):
    add_odd_events()
    qs = AuditEvent.objects.all()
    copied = "".join(audit_export.iter_csv_copy(qs))
    written = "".join(audit_export.iter_csv(qs))
    assert copied.splitlines()[0] == ",".join(EXPORT_FIELDS)
    assert parsed(copied) == parsed(written)
    assert [row["seq"] for row in parsed(copied)] == ["1", "2", "3"]
    # The CSV the console serves on PostgreSQL is COPY's.
    out = io.StringIO()
    audit_export.export_csv(out, qs)
    assert out.getvalue() == copied
    # And the documented standard-library snippet verifies it.
    export = tmp_path / "audit.csv"
    export.write_text(copied, encoding="utf-8", newline="")
    result = run_offline(offline_verifier(tmp_path), export)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 events checked; last #3" in result.stdout


@pytest.mark.django_db
@pytest.mark.parametrize("debug_cursor", [False, True])  # DEBUG=1 (the demo) logs SQL through another cursor class
def test_copy_export_honours_the_filters_and_order(debug_cursor):
    add_odd_events()
    qs = audit_export.filter_events(target="billing") | AuditEvent.objects.filter(message__icontains="ÜNÏCODE")
    qs = qs | AuditEvent.objects.filter(message__icontains="it's '; DROP TABLE x; --")
    with CaptureQueriesContext(connection) if debug_cursor else contextlib.nullcontext() as captured:
        rows = parsed("".join(audit_export.iter_csv_copy(qs)))
    assert [(row["seq"], row["target_name"]) for row in rows] == [("2", "shop"), ("3", "billing")]
    if debug_cursor:
        assert any(query["sql"].startswith("COPY (SELECT") for query in captured.captured_queries)


@pytest.mark.django_db
def test_an_abandoned_copy_export_leaves_the_connection_usable(monkeypatch):
    for n in range(30):
        append_event(action="stamp", outcome="info", actor=Actor.cron(), target="t", message=f"padding {'x' * 500} {n}")
    monkeypatch.setattr(audit_export, "COPY_CHUNK_BYTES", 1024)
    chunks = audit_export.iter_csv_copy(AuditEvent.objects.all())
    next(chunks), next(chunks)  # header, then the first chunk: the COPY is under way
    chunks.close()  # the client went away mid-download
    assert AuditEvent.objects.count() == 30
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
