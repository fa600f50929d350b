"""The audit log: append-only triggers, the hash chain, verify_audit_log and export_audit_log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.chain import GENESIS_HASH, compute_hash, event_fields
from opsapp.services.audit.log import append_event
from opsapp.services.audit.verify import EDITED, MISSING, last_verification, verify_chain

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE = "opsapp_auditevent"


def add_events(n: int, **extra) -> list[AuditEvent]:
    actor = Actor(username="olga", user_id=7, client_ip="10.1.2.3", user_agent="pytest")
    return [
        append_event(
            action=AuditAction.ROLLBACK_REQUESTED,
            outcome=AuditOutcome.SUCCESS,
            actor=actor,
            message=f"event {i}",
            target=extra.get("target", "shop"),
            request_id=100 + i,
            from_revision=["b2", "c3"],
            to_revision="a1",
            detail={"i": i, "nested": {"z": 1, "a": [1.5, None, True]}},
        )
        for i in range(n)
    ]


def raw(sql: str, params: tuple = ()) -> list[tuple]:
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def tamper(sql: str, params: tuple = ()) -> None:
    """What a superuser could do: switch the triggers off, change history, switch them on."""
    raw(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
    raw(sql, params)
    raw(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")


def chain_rows() -> list[tuple]:
    return list(AuditEvent.objects.order_by("seq").values_list("seq", "message", "prev_hash", "hash"))


def verify_command(*args: str) -> tuple[str, CommandError | None]:
    out = StringIO()
    try:
        call_command("verify_audit_log", *args, stdout=out, stderr=StringIO())
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def offline_verifier(tmp_path: Path) -> Path:
    """The verification snippet exactly as docs/audit.md shows it, saved as a script."""
    text = (REPO_ROOT / "docs" / "audit.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    snippet = next(block for block in blocks if "def verify_export" in block)
    script = tmp_path / "verify_audit_export.py"
    script.write_text(snippet)
    return script


def run_offline(script: Path, export: Path) -> subprocess.CompletedProcess:
    # -I: isolated mode, no site-packages and no project on the path: the standard library only.
    return subprocess.run([sys.executable, "-I", str(script), str(export)], capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------- the chain
@pytest.mark.django_db
def test_appends_form_a_gapless_chain_that_verifies():
    events = add_events(4)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:], strict=False))
    stored = AuditEvent.objects.get(seq=3)
    assert compute_hash(event_fields(stored)) == stored.hash
    assert stored.from_revision == "b2,c3"

    result = verify_chain(batch_size=3)  # crosses a batch boundary
    assert result.ok and result.checked == 4 and result.head_seq == 4 and result.head_hash == events[-1].hash


@pytest.mark.django_db
def test_it_hashes_values_as_the_database_gives_them_back():
    event = append_event(
        action=AuditAction.STAMP,
        outcome=AuditOutcome.INFO,
        actor=Actor(username="cli:ops", client_ip="2001:DB8::1"),
        message="url postgresql://app:s3cret@db/shop\x00",
        detail={"big": 1e20, "one": 1.0, "tiny": 1e-7, "url": "postgresql://app:s3cret@db/shop", "nan": float("nan")},
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.client_ip == "2001:db8::1"
    assert "s3cret" not in stored.message and "s3cret" not in json.dumps(stored.detail)
    assert verify_chain().ok


@pytest.mark.django_db
def test_a_garbage_client_address_does_not_fail_the_audited_operation():
    event = append_event(
        action=AuditAction.STAMP, outcome=AuditOutcome.INFO, actor=Actor(username="olga", client_ip="not-an-ip")
    )
    assert event.client_ip is None
    assert AuditEvent.objects.get(pk=event.pk).detail["client_ip_raw"] == "not-an-ip"


@pytest.mark.django_db
def test_an_audit_write_inside_a_failed_operation_leaves_no_gap():
    add_events(1)
    with pytest.raises(RuntimeError), transaction.atomic():
        add_events(1)
        raise RuntimeError("the operation failed after auditing")
    assert [e.seq for e in add_events(1)] == [2]
    assert verify_chain().ok


# --------------------------------------------------------- append-only triggers
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sql", "verb"),
    [
        (f"UPDATE {TABLE} SET message = 'rewritten' WHERE seq = 2", "UPDATE"),
        (f"DELETE FROM {TABLE} WHERE seq = 2", "DELETE"),
        (f"TRUNCATE {TABLE}", "TRUNCATE"),
    ],
)
def test_raw_sql_cannot_change_or_remove_events(sql, verb):
    add_events(3)
    before = chain_rows()
    with pytest.raises(DatabaseError, match=f"opsapp_auditevent is append-only: {verb} is not allowed"):
        with transaction.atomic():
            raw(sql)
    assert chain_rows() == before
    assert verify_chain().ok


@pytest.mark.django_db
def test_the_orm_cannot_change_or_delete_events_either():
    (event,) = add_events(1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(message="rewritten")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).message == "event 0"


# ------------------------------------------------------------ verify_audit_log
@pytest.mark.django_db
def test_verify_audit_log_passes_records_its_result_and_prints_the_head():
    events = add_events(3)
    out, error = verify_command("--print-head")
    assert error is None
    assert out.strip() == f"3 {events[-1].hash}"  # nothing else: cron ships this line as the anchor
    recorded = last_verification()
    assert recorded.seq == 4 and recorded.outcome == AuditOutcome.SUCCESS and recorded.detail["head_seq"] == 3

    out, error = verify_command()
    assert error is None and "Audit log OK: 4 events verified" in out

    out, error = verify_command("--json")
    assert error is None
    data = json.loads(out)
    assert data["ok"] is True and data["checked"] == 5 and data["first_bad_seq"] is None


@pytest.mark.django_db
def test_verify_audit_log_finds_an_edit_made_with_the_trigger_disabled():
    add_events(5)
    tamper(f"UPDATE {TABLE} SET message = 'nothing to see here' WHERE seq = 3")

    out, error = verify_command()
    assert error is not None and error.returncode == 1
    assert "#3" in str(error) and "edited" in str(error)
    recorded = last_verification()
    assert recorded.outcome == AuditOutcome.FAILURE and recorded.detail["first_bad_seq"] == 3

    out, error = verify_command("--json")
    assert json.loads(out)["first_bad_seq"] == 3 and json.loads(out)["problem"] == EDITED


@pytest.mark.django_db
def test_verify_audit_log_finds_a_deleted_event():
    add_events(5)
    tamper(f"DELETE FROM {TABLE} WHERE seq = 2")
    _, error = verify_command()
    assert error is not None and error.returncode == 1
    assert "#2" in str(error) and MISSING in str(error)


@pytest.mark.django_db
def test_verify_audit_log_finds_a_rehashed_replacement():
    add_events(5)
    forged = event_fields(AuditEvent.objects.get(seq=3))
    forged.update(message="forged", prev_hash="f" * 64)
    tamper(
        f"UPDATE {TABLE} SET message = %s, prev_hash = %s, hash = %s WHERE seq = 3",
        (forged["message"], forged["prev_hash"], compute_hash(forged)),
    )
    # Its hash is right, but without the audit key its MAC cannot be.
    result = verify_chain()
    assert (result.ok, result.first_bad_seq, result.problem) == (False, 3, EDITED)
    assert "MAC" in result.message


@pytest.mark.django_db
def test_only_the_anchor_reveals_that_the_newest_events_were_removed():
    events = add_events(4)
    tamper(f"DELETE FROM {TABLE} WHERE seq = 4")
    assert verify_chain().ok
    _, error = verify_command("--anchor", f"4:{events[-1].hash}")
    assert error is not None and error.returncode == 1 and "#4" in str(error) and "missing" in str(error)

    _, error = verify_command("--anchor", "four:abc")
    assert error is not None and error.returncode == 2 and "SEQ:HASH" in str(error)


# -------------------------------------------------------------- export_audit_log
@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_exported_file_verifies_offline_with_the_documented_snippet(fmt, tmp_path):
    add_events(3)
    append_event(
        action=AuditAction.HEADS_CHANGED,
        outcome=AuditOutcome.INFO,
        actor=Actor.cron(),
        target="billing",
        message='line one\nline "two", with ünïcode\r\nand a comma',
        detail={"old": ["a1"], "new": [], "ratio": 0.1, "big": 10**20},
    )
    export = tmp_path / f"audit.{fmt}"
    call_command("export_audit_log", "--format", fmt, "--output", str(export), stderr=StringIO())

    script = offline_verifier(tmp_path)
    result = run_offline(script, export)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 events checked; last #4" in result.stdout
    # The export was audited (after the events it contains).
    assert AuditEvent.objects.order_by("-seq").first().action == AuditAction.AUDIT_EXPORTED

    tampered = tmp_path / f"tampered.{fmt}"
    tampered.write_text(export.read_text(encoding="utf-8").replace("event 1", "event 9"), encoding="utf-8")
    result = run_offline(script, tampered)
    assert result.returncode == 1 and "#2: edited" in result.stdout


@pytest.mark.django_db
def test_export_audit_log_filters_by_target_and_period():
    add_events(2, target="shop")
    add_events(1, target="billing")
    out = StringIO()
    call_command("export_audit_log", "--format", "jsonl", "--target", "billing", stdout=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["seq"], r["target_name"]) for r in rows] == [(3, "billing")]
    assert set(rows[0]) >= {"seq", "created_at", "detail", "prev_hash", "hash"}

    out = StringIO()
    call_command("export_audit_log", "--format", "csv", "--until", "2000-01-01", stdout=out)
    assert out.getvalue().splitlines() == [
        "seq,created_at,actor_user_id,actor,action,outcome,target_name,request_id,snapshot_id,from_revision,"
        "to_revision,message,detail,client_ip,user_agent,prev_hash,key_id,hash,mac"
    ]
    out = StringIO()
    call_command("export_audit_log", "--format", "jsonl", "--since", "2000-01-01", stdout=out)
    assert len(out.getvalue().splitlines()) == 5  # three events, the export above, and this one's own


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "bad date: 'yesterday' is not a date"),
        (["--until", "2026-02-30"], "bad date: '2026-02-30' is not a date"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "--since must be before --until"),
    ],
)
def test_export_audit_log_refuses_bad_dates_with_exit_2(args, message):
    add_events(1)
    out = StringIO()
    with pytest.raises(CommandError, match=re.escape(message)) as excinfo:
        call_command("export_audit_log", "--format", "csv", *args, stdout=out)
    assert excinfo.value.returncode == 2
    assert out.getvalue() == ""
    assert AuditEvent.objects.count() == 1  # nothing exported, nothing recorded


# ----------------------------------------------------- committed, multi-process
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("run", [1, 2])
def test_a_committed_append_starts_a_fresh_chain_in_each_transactional_test(run):
    # Run twice: the second run only starts at #1 if the flush between tests
    # emptied the append-only table (tests/conftest.py).
    (event,) = add_events(1)
    assert event.seq == 1 and event.prev_hash == GENESIS_HASH


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_from_several_processes_leave_a_gapless_chain(tmp_path):
    add_events(1)
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    go = tmp_path / "go"
    code = textwrap.dedent(
        f"""
        import os, sys, time
        import django
        django.setup()
        from opsapp.services.actors import Actor
        from opsapp.services.audit.log import append_event
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        for i in range(20):
            append_event(action="stamp", outcome="info", actor=Actor.cli("worker" + sys.argv[1]), message=str(i))
        """
    )
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "console.settings_test", "LOG_LEVEL": "WARNING"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(n)], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        for n in range(4)
    ]
    go.touch()
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err

    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 82))
    assert AuditEvent.objects.filter(actor="cli:worker3").count() == 20
    result = verify_chain(batch_size=17)
    assert result.ok and result.checked == 81


@pytest.mark.django_db
def test_an_export_that_fails_midway_leaves_no_file_under_the_real_name(tmp_path, monkeypatch):
    from opsapp.management.commands import export_audit_log

    add_events(3)
    export = tmp_path / "audit.csv"
    export.write_text("an older, complete export\n")

    def breaks_after_one_chunk(fmt, qs):
        yield "seq,created_at\n"
        raise DatabaseError("connection lost")

    monkeypatch.setattr(export_audit_log, "iter_export", breaks_after_one_chunk)
    with pytest.raises(CommandError, match="export failed: connection lost") as excinfo:
        call_command("export_audit_log", "--format", "csv", "--output", str(export), stderr=StringIO())

    assert excinfo.value.returncode == 1
    assert export.read_text() == "an older, complete export\n"  # not truncated, not replaced
    assert [p.name for p in tmp_path.iterdir()] == ["audit.csv"]  # no partial file left either
