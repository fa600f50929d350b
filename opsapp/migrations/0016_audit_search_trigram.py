"""A trigram index for the auditor's search (`?q=` on the audit log), PostgreSQL only.

The admin's search is Django's `icontains` over message, from_revision and
to_revision: `UPPER(col::text) LIKE UPPER('%word%')`. A B-tree cannot serve a
leading wildcard, so at 1,000,000 events every search was a sequential scan.
A GIN index over the same `UPPER(col::text)` expressions with pg_trgm's
operator class serves it (one index, three columns: the planner ORs them).

pg_trgm is a trusted extension from PostgreSQL 13: the database owner, or any
role with CREATE on the database, may create it. When the console's role may
not (or the server lacks the contrib package), the migration says so and goes
on without the index: search still works, only slower, and system check
opsapp.W044 keeps saying so until an administrator runs
`CREATE EXTENSION pg_trgm;` in the console database and then
re-run migration 0016_audit_search_trigram (`manage.py migrate opsapp` to the migration before it, then `manage.py migrate`).
"""

from __future__ import annotations

from django.db import migrations

from opsapp.services.audit.search import drop_search_index, ensure_search_index


def forwards(apps, schema_editor) -> None:
    ensure_search_index(schema_editor.connection)


def backwards(apps, schema_editor) -> None:
    drop_search_index(schema_editor.connection)


class Migration(migrations.Migration):
    dependencies = [
        ("opsapp", "0015_operation_rehearsal"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
