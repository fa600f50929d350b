"""An audit write that fails makes the operation it records fail: no unaudited downgrade.

The failure is a real database error: a trigger (created inside the test's
transaction, so it disappears with it) refuses the one INSERT we want to fail.
"""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("rollback_fixtures")

from django.db import DatabaseError, connection  # noqa: E402
from rollback_fixtures import audit_actions, operator_actor  # noqa: E402

from opsapp.models import RollbackRequest  # noqa: E402
from opsapp.services.rollback.requests import execute_request  # noqa: E402

pytest_plugins = ["rollback_fixtures"]


def refuse_audit_inserts_of(action: str) -> None:
    with connection.cursor() as cur:
        cur.execute(
            """
            CREATE FUNCTION pg_temp.refuse_audit_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'audit storage failed on purpose'; END $$
            """
        )
        cur.execute(
            f"""CREATE TRIGGER refuse_audit_insert BEFORE INSERT ON opsapp_auditevent
                FOR EACH ROW WHEN (NEW.action = '{action}') EXECUTE FUNCTION pg_temp.refuse_audit_insert()"""
        )


@pytest.mark.django_db
def test_a_downgrade_whose_started_event_cannot_be_written_never_runs(ready_request, operator):
    r = ready_request
    before = r.env.state()
    refuse_audit_inserts_of("rollback_started")

    with pytest.raises(DatabaseError, match="audit storage failed on purpose"):
        execute_request(r.request.pk, code=r.code, actor=operator_actor(operator))

    assert r.env.state() == before  # the target was never touched
    request = RollbackRequest.objects.get(pk=r.request.pk)
    assert request.status != "succeeded" and request.reverted == []
    # Marking it running and auditing that are one transaction: it stays pending, its code unspent.
    assert request.status == "pending" and request.code_used_at is None
    assert "rollback_started" not in audit_actions(request.pk)
    assert "rollback_succeeded" not in audit_actions(request.pk)
