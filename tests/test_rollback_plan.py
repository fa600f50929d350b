"""The plan's facts: rows a DELETE or UPDATE really matches, the approver's email, the page after the downgrade."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("rollback_fixtures")

from conftest import pg_query  # noqa: E402
from django.core import mail  # noqa: E402
from django.urls import reverse  # noqa: E402
from rollback_fixtures import (  # noqa: E402
    code_from_outbox,
    make_request,
    operator_actor,
    take_verified_snapshot,
)

from opsapp.models import AuditEvent  # noqa: E402
from opsapp.services.rollback import plan as rollback_plan  # noqa: E402
from opsapp.services.rollback.requests import execute_request  # noqa: E402

pytest_plugins = ["rollback_fixtures"]
pytestmark = pytest.mark.django_db

DELETE_ONE = "DELETE FROM customers WHERE name = 'Alan'"
DELETE_NONE = "DELETE FROM notes WHERE id > 10"
UPDATE_TWO = "UPDATE customers SET email = NULL WHERE id <= 2"


def data_changing_history(env) -> None:
    """r4..r6 whose downgrades change data with a WHERE: 1 of 3 customers, 0 of 2 notes, 2 of 3 customers."""
    env.add_revision("r4", "r3", downgrade=f'op.execute("{DELETE_ONE}")')
    env.add_revision("r5", "r4", downgrade=f'op.execute("{DELETE_NONE}")')
    env.add_revision("r6", "r5", downgrade=f'op.execute("{UPDATE_TWO}")')


def item(request, statement: str) -> dict:
    found = [d for d in request.destructive if d["statement"] == statement]
    assert len(found) == 1, request.destructive
    return found[0]


def test_a_delete_or_update_with_a_where_shows_the_rows_it_matches_not_the_whole_table(
    rollback_env, operator, approver
):
    env = rollback_env
    data_changing_history(env)

    request = make_request(env, operator, to="r3")

    one = item(request, DELETE_ONE)
    assert (one["kind"], one["table"], one["rows"], one["table_rows"]) == ("DELETE", "customers", 1, 3)
    assert one["where"] == "name = 'Alan'"
    none = item(request, DELETE_NONE)
    assert (none["kind"], none["table"], none["rows"], none["table_rows"]) == ("DELETE", "notes", 0, 2)
    update = item(request, UPDATE_TWO)
    assert (update["kind"], update["table"], update["rows"], update["table_rows"]) == ("UPDATE", "customers", 2, 3)
    # The version table's own UPDATE/DELETE is Alembic's bookkeeping, not a data change.
    assert all(d["table"] != "alembic_version" for d in request.destructive)
    assert env.counts() == {"customers": 3, "notes": 2}  # counting changed nothing


def test_a_where_that_cannot_be_counted_read_only_says_so_with_the_table_size(rollback_env, operator, approver):
    env = rollback_env
    pg_query(env.url, "CREATE SEQUENCE probe_seq")
    writes = "DELETE FROM customers WHERE id < nextval('probe_seq')"
    env.add_revision("r4", "r3", downgrade=f'op.execute("{writes}")')

    request = make_request(env, operator, to="r3")

    found = item(request, writes)
    assert found["rows"] is None and found["table_rows"] == 3
    assert "not counted (table has 3 rows)" in found["note"]
    # READ ONLY: nextval was refused, the sequence never moved.
    assert pg_query(env.url, "SELECT last_value, is_called FROM probe_seq") == [(1, False)]
    body = mail.outbox[-1].body
    assert "not counted (table has 3 rows)" in body and "3 rows" not in body.replace("table has 3 rows", "")


def test_a_slow_where_is_cut_by_the_statement_timeout_and_not_counted(rollback_env, operator, approver, monkeypatch):
    env = rollback_env
    monkeypatch.setattr(rollback_plan, "COUNT_TIMEOUT_MS", 200)
    slow = "DELETE FROM customers WHERE id = (SELECT 1 FROM pg_sleep(5))"
    env.add_revision("r4", "r3", downgrade=f'op.execute("{slow}")')

    request = make_request(env, operator, to="r3")

    found = item(request, slow)
    assert found["rows"] is None and "not counted (table has 3 rows)" in found["note"]


def test_the_approver_email_shows_each_data_changing_statement_as_it_is_with_its_matched_rows(
    rollback_env, operator, approver
):
    env = rollback_env
    data_changing_history(env)

    request = make_request(env, operator, to="r3")

    (message,) = [m for m in mail.outbox if f"request #{request.pk} " in m.subject]
    for statement in (DELETE_ONE, DELETE_NONE, UPDATE_TWO):
        assert statement in message.body
    assert "DELETE customers: 1 of 3 rows match" in message.body
    assert "DELETE notes: 0 of 2 rows match" in message.body
    assert "UPDATE customers: 2 of 3 rows match" in message.body
    assert "3 rows\n" not in message.body


def test_after_the_downgrade_the_page_shows_the_figures_recorded_at_request_time_labelled_as_such(
    client, rollback_env, operator, approver
):
    env = rollback_env
    snap = take_verified_snapshot(env, operator)
    request = make_request(env, operator, to="r1", snapshot=snap)
    client.force_login(operator)
    before = client.get(reverse("admin:opsapp_rollbackrequest_change", args=[request.pk])).content.decode()
    assert "rows now" not in before and "recorded at request time" in before

    execute_request(request.pk, code=code_from_outbox(request.pk), actor=operator_actor(operator))

    assert env.schema() == {"alembic_version": ["version_num"], "customers": ["id", "name"]}  # notes, email gone
    page = client.get(reverse("admin:opsapp_rollbackrequest_change", args=[request.pk])).content.decode()
    assert "rows now" not in page
    assert "recorded at request time" in page and "the downgrade has run" in page
    notes = page.split('<tr class="destructive-row">')
    notes_row = next(row for row in notes[1:] if "notes" in row.split("</tr>")[0])
    assert "<strong>2</strong>" in notes_row.split("</tr>")[0]
    assert AuditEvent.objects.filter(request_id=request.pk, action="rollback_succeeded").exists()


@pytest.mark.parametrize(
    ("statement", "where", "count_sql"),
    [
        ("DELETE FROM t WHERE a = 'x WHERE y'", "a = 'x WHERE y'", "SELECT count(*) FROM t  WHERE a = 'x WHERE y'"),
        ("DELETE FROM s.t AS z WHERE z.a > 1", "z.a > 1", "SELECT count(*) FROM s.t AS z WHERE z.a > 1"),
        (
            "UPDATE t SET a = (SELECT max(b) FROM u WHERE u.id = t.id) WHERE t.c IS NULL",
            "t.c IS NULL",
            "SELECT count(*) FROM t  WHERE t.c IS NULL",
        ),
        ("UPDATE t SET a = (SELECT 1 FROM u WHERE u.id = t.id)", "", ""),  # no WHERE: the whole table
        ("DELETE FROM t USING u WHERE t.id = u.id", "t.id = u.id", ""),  # a join: not counted
        ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", "t.id = u.id", ""),
        ("DELETE FROM t WHERE a = 1 RETURNING id", "a = 1 RETURNING id", ""),
        ("DELETE FROM t WHERE a = 1; DROP TABLE u", "a = 1; DROP TABLE u", ""),  # never two statements
    ],
)
def test_the_where_clause_is_found_at_the_top_level_and_counted_only_when_that_is_safe(statement, where, count_sql):
    (found,) = rollback_plan.find_destructive(
        [rollback_plan.Statement(statement, "r1")], dialect="postgresql", version_table="alembic_version"
    )
    assert (found["where"], found["count_sql"]) == (where, count_sql)


def test_the_dropped_columns_of_a_table_are_counted_in_one_scan(rollback_env, operator, approver):
    import sqlalchemy as sa

    env = rollback_env
    env.add_revision(
        "r4",
        "r3",
        upgrade=(
            "op.add_column('customers', sa.Column('phone', sa.String(20))); "
            "op.add_column('customers', sa.Column('city', sa.String(20))); "
            "op.execute(\"UPDATE customers SET phone = '1' WHERE id = 1\")"
        ),
        downgrade="op.drop_column('customers', 'city'); op.drop_column('customers', 'phone')",
    )
    counts: list[str] = []

    def spy(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT count("):
            counts.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", spy)
    try:
        request = make_request(env, operator, to="r1")
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", spy)

    dropped = {d["column"]: d for d in request.destructive if d["kind"] == "DROP COLUMN"}
    assert {c: (d["rows"], d["non_null"]) for c, d in dropped.items()} == {
        "city": (3, 0),
        "phone": (3, 1),
        "email": (3, 3),
    }
    # customers (three dropped columns) and notes (dropped table): one scan each.
    assert sorted(s.rsplit(" FROM ", 1)[1].strip('"') for s in counts) == ["customers", "notes"]
