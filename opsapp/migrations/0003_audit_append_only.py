"""Make the audit table append-only in the database itself.

PostgreSQL: row-level BEFORE UPDATE / BEFORE DELETE triggers and a
statement-level BEFORE TRUNCATE trigger that raise. SQLite: BEFORE UPDATE /
BEFORE DELETE triggers with RAISE(ABORT) (SQLite has no TRUNCATE; a DELETE
without WHERE still fires the trigger). The table owner (or a superuser) can
still disable the triggers: docs/audit.md explains the separate-owner setup
that takes that power away from the application's role.
"""

from django.db import migrations

TABLE = "opsapp_auditevent"
MESSAGE = "opsapp_auditevent is append-only"

PG_INSTALL = [
    f"""
    CREATE OR REPLACE FUNCTION opsapp_auditevent_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{MESSAGE}: % is not allowed', TG_OP
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Audit events are only ever appended (opsapp.services.audit.append_event).';
    END
    $$
    """,
    f"""CREATE TRIGGER opsapp_auditevent_no_update BEFORE UPDATE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION opsapp_auditevent_append_only()""",
    f"""CREATE TRIGGER opsapp_auditevent_no_delete BEFORE DELETE ON {TABLE}
        FOR EACH ROW EXECUTE FUNCTION opsapp_auditevent_append_only()""",
    f"""CREATE TRIGGER opsapp_auditevent_no_truncate BEFORE TRUNCATE ON {TABLE}
        FOR EACH STATEMENT EXECUTE FUNCTION opsapp_auditevent_append_only()""",
]
PG_REMOVE = [
    f"DROP TRIGGER IF EXISTS opsapp_auditevent_no_update ON {TABLE}",
    f"DROP TRIGGER IF EXISTS opsapp_auditevent_no_delete ON {TABLE}",
    f"DROP TRIGGER IF EXISTS opsapp_auditevent_no_truncate ON {TABLE}",
    "DROP FUNCTION IF EXISTS opsapp_auditevent_append_only()",
]
SQLITE_INSTALL = [
    f"""CREATE TRIGGER opsapp_auditevent_no_update BEFORE UPDATE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}: UPDATE is not allowed'); END""",
    f"""CREATE TRIGGER opsapp_auditevent_no_delete BEFORE DELETE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}: DELETE is not allowed'); END""",
]
SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS opsapp_auditevent_no_update",
    "DROP TRIGGER IF EXISTS opsapp_auditevent_no_delete",
]


def _run(schema_editor, statements_by_vendor):
    statements = statements_by_vendor.get(schema_editor.connection.vendor)
    if statements is None:
        raise RuntimeError(
            f"no append-only triggers for database vendor {schema_editor.connection.vendor!r}; "
            "the console supports PostgreSQL and SQLite"
        )
    for sql in statements:
        # params=None: no placeholder parsing (the PL/pgSQL body uses a literal %).
        schema_editor.execute(sql, params=None)


def install(apps, schema_editor):
    _run(schema_editor, {"postgresql": PG_INSTALL, "sqlite": SQLITE_INSTALL})


def remove(apps, schema_editor):
    _run(schema_editor, {"postgresql": PG_REMOVE, "sqlite": SQLITE_REMOVE})


class Migration(migrations.Migration):
    dependencies = [("opsapp", "0002_roles")]

    operations = [migrations.RunPython(install, remove)]
