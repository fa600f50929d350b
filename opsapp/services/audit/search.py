"""The auditor's search index: pg_trgm GIN over the texts `?q=` searches (PostgreSQL only).

The audit changelist searches message, from_revision and to_revision with
Django's `icontains`, which PostgreSQL receives as
`UPPER("opsapp_auditevent"."message"::text) LIKE UPPER('%word%')`. The index
is built over exactly those expressions so the planner can use it; with the
`%word%` pattern only a trigram index helps (a B-tree needs a fixed prefix).

Migration 0017 calls `ensure_search_index`. SQLite has no such index and
searches by scanning, which is fine at its sizes.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("opsapp.audit")

INDEX_NAME = "audit_search_trgm"
TABLE = "opsapp_auditevent"
# The columns of AuditEventAdmin.search_fields, as Django's icontains writes them.
SEARCHED = ("message", "from_revision", "to_revision")


def index_sql() -> str:
    expressions = ", ".join(f'UPPER("{column}"::text) gin_trgm_ops' for column in SEARCHED)
    return f'CREATE INDEX IF NOT EXISTS "{INDEX_NAME}" ON "{TABLE}" USING gin ({expressions})'


def _extension_installed(cursor) -> bool:
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
    return cursor.fetchone() is not None


def ensure_search_index(connection: BaseDatabaseWrapper) -> str | None:
    """Create pg_trgm (if the role may) and the search index; return None, or why it could not.

    Never raises for a missing privilege or a server without pg_trgm: the
    console works without the index (search only scans), so the reason is
    logged and returned, and system check opsapp.W044 repeats it.
    """
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        if not _extension_installed(cursor):
            cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
            if cursor.fetchone() is None:
                reason = "the PostgreSQL server has no pg_trgm extension (install the postgresql-contrib package)"
                logger.warning("audit search index not created: %s", reason)
                return reason
            try:
                with transaction.atomic(using=connection.alias):  # a savepoint: a refusal leaves the migration usable
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            except DatabaseError as exc:
                reason = (
                    f"the console's database role may not create the pg_trgm extension ({str(exc).strip()}); "
                    "a superuser can run CREATE EXTENSION pg_trgm; in the console database, "
                    "then re-running migration 0016_audit_search_trigram builds the index "
                    "(`manage.py migrate opsapp` to the migration before it, then `manage.py migrate`)"
                )
                logger.warning("audit search index not created: %s", reason)
                return reason
        cursor.execute(index_sql())
    return None


def drop_search_index(connection: BaseDatabaseWrapper) -> None:
    """Drop the index (not the extension: other code may use it)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f'DROP INDEX IF EXISTS "{INDEX_NAME}"')


def search_index_missing(connection: BaseDatabaseWrapper) -> bool:
    """True on PostgreSQL when the audit table exists but the search index does not."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL", [f'"{TABLE}"', f'"{INDEX_NAME}"']
        )
        table, index = cursor.fetchone()
    return table and not index
