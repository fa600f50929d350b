"""Measuring a scratch copy: rows, non-null values, schema; and the differences between two measurements.

Everything here reads through a SQLAlchemy connection (PostgreSQL or SQLite)
and is exact: `count(*)` and `count(column)` on the copy, never statistics.
One scan per table counts its rows and the non-null values of every column.
"""

from __future__ import annotations

import difflib
import re
import subprocess
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from django.conf import settings

from opsapp.services.errors import OpsError
from opsapp.services.snapshots.postgres import _child_env, libpq_target
from opsapp.targets import mask_url

Measure = dict[str, dict[str, Any]]  # {table: {"rows": n, "values": {column: non-null count}}}
Schema = dict[str, dict[str, Any]]


def _tables(conn: sa.Connection, version_table: str) -> list[str]:
    return sorted(t for t in sa.inspect(conn).get_table_names() if t != version_table)


def measure(
    conn: sa.Connection, version_table: str = "alembic_version", value_columns: dict[str, set[str]] | None = None
) -> Measure:
    """Rows of every table and non-null values of every column, on `conn` (inside its transaction if any).

    With `value_columns` ({table: columns}), non-null values are counted only
    for those columns (the rows of every table still are).
    """
    quote = conn.dialect.identifier_preparer.quote
    inspector = sa.inspect(conn)
    result: Measure = {}
    for table in _tables(conn, version_table):
        columns = [c["name"] for c in inspector.get_columns(table)]
        if value_columns is not None:
            columns = [c for c in columns if c in value_columns.get(table, ())]
        parts = ["count(*)"] + [f"count({quote(c)})" for c in columns]
        row = conn.exec_driver_sql(f"SELECT {', '.join(parts)} FROM {quote(table)}").one()
        result[table] = {"rows": int(row[0]), "values": {c: int(n) for c, n in zip(columns, row[1:], strict=True)}}
    return result


def storage_of(conn: sa.Connection, version_table: str = "alembic_version") -> dict[str, int] | None:
    """PostgreSQL: {table: its data file number (pg_relation_filenode)} of the tables `measure` counts.

    None when one of them is partitioned or takes part in inheritance: a
    parent's count(*) then moves with its children's rows, so only counting
    every table again is exact.
    """
    rows = conn.exec_driver_sql(
        "SELECT c.relname, pg_relation_filenode(c.oid), c.relkind = 'p' OR c.relispartition "
        "OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid OR i.inhparent = c.oid) "
        "FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')"
    ).all()
    if any(inherits for _name, _node, inherits in rows):
        return None
    return {name: int(node or 0) for name, node, _inherits in rows if name != version_table}


def columns_of(conn: sa.Connection, version_table: str = "alembic_version") -> dict[str, set[str]]:
    """PostgreSQL: {table: its column names} of the current schema, from the catalog (one query; inside the
    downgrade's transaction it sees the transaction's own changes)."""
    found: dict[str, set[str]] = {}
    for table, column in conn.exec_driver_sql(
        "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
        "AND a.attnum > 0 AND NOT a.attisdropped"
    ):
        if table != version_table:
            found.setdefault(table, set()).add(column)
    return found


def uncounted_drops(before: Measure, columns_before: dict[str, set[str]], columns_now: dict[str, set[str]]) -> set:
    """(table, column) pairs that disappeared from a table that is still there without their values counted."""
    return {
        (table, column)
        for table, now in columns_now.items()
        if table in before
        for column in columns_before.get(table, set()) - now
        if column not in before[table]["values"]
    }


def tables_written(conn: sa.Connection) -> set[str]:
    """PostgreSQL, inside the downgrade's transaction: tables of the current schema whose rows it inserted,
    updated or deleted (pg_stat_xact_user_tables: the server's own per-transaction counts, triggers and
    foreign-key cascades included; an aborted subtransaction's writes count too, which only adds tables)."""
    return {
        row[0]
        for row in conn.exec_driver_sql(
            "SELECT relname FROM pg_stat_xact_user_tables WHERE schemaname = current_schema() "
            "AND n_tup_ins + n_tup_upd + n_tup_del > 0"
        )
    }


def rows_after(
    conn: sa.Connection,
    before: Measure,
    storage_before: dict[str, int],
    written: set[str],
    schema_after: Schema,
    version_table: str = "alembic_version",
) -> Measure:
    """Rows of every table after the downgrade, counting again only the tables it may have changed.

    A table keeps exactly the rows it had when the transaction wrote none of
    them (`tables_written`) and its data file is the same (TRUNCATE and table
    rewrites give it a new one, and bypass the row counts): its count is the
    one measured before. Every other table, and any table that is new, is
    counted (`count(*)`). `values` are left empty: what is lost is the
    dropped columns' values, measured before.
    """
    storage_after = storage_of(conn, version_table) or {}
    quote = conn.dialect.identifier_preparer.quote
    result: Measure = {}
    for table in sorted(schema_after):
        if table in before and table not in written and storage_before.get(table) == storage_after.get(table):
            result[table] = {"rows": before[table]["rows"], "values": {}}
        else:
            rows = conn.exec_driver_sql(f"SELECT count(*) FROM {quote(table)}").scalar()
            result[table] = {"rows": int(rows or 0), "values": {}}
    return result


def schema_of(conn: sa.Connection, version_table: str = "alembic_version") -> Schema:
    """Tables with their columns (type, nullable), primary key, indexes, unique constraints and foreign keys."""
    inspector = sa.inspect(conn)
    schema: Schema = {}
    for table in _tables(conn, version_table):
        schema[table] = {
            "columns": {
                c["name"]: {"type": str(c["type"]), "nullable": bool(c["nullable"])}
                for c in inspector.get_columns(table)
            },
            "primary_key": list(inspector.get_pk_constraint(table).get("constrained_columns") or []),
            "indexes": sorted(
                f"{i['name']}({','.join(str(c) for c in i['column_names'])}{' unique' if i.get('unique') else ''})"
                for i in inspector.get_indexes(table)
            ),
            "uniques": sorted(
                f"{u['name']}({','.join(u['column_names'])})" for u in inspector.get_unique_constraints(table)
            ),
            "foreign_keys": sorted(
                f"({','.join(f['constrained_columns'])})->{f['referred_table']}({','.join(f['referred_columns'])})"
                for f in inspector.get_foreign_keys(table)
            ),
        }
    return schema


def destroyed(before: Measure, after_schema: Schema, after: Measure) -> dict[str, Any]:
    """What the downgrade destroyed: tables and columns that disappear, rows lost per table, values of dropped columns."""
    tables = sorted(t for t in before if t not in after_schema)
    columns: list[str] = []
    rows: dict[str, int] = {}
    values: dict[str, int] = {}
    for table, measured in before.items():
        if table in tables:
            if measured["rows"]:
                rows[table] = measured["rows"]
            continue
        lost = measured["rows"] - after.get(table, {}).get("rows", 0)
        if lost > 0:
            rows[table] = lost
        for column, count in measured["values"].items():
            if column not in after_schema[table]["columns"]:
                columns.append(f"{table}.{column}")
                if count:
                    values[f"{table}.{column}"] = count
    return {"tables": tables, "columns": sorted(columns), "rows": rows, "values": values}


def loss_summary(lost: dict[str, Any]) -> str:
    """'destroys 8,120 rows of refunds and 100 values of accounts.email', or 'destroys no data'."""
    parts = [f"{n:,} row{'s' if n != 1 else ''} of {t}" for t, n in sorted(lost.get("rows", {}).items())]
    parts += [f"{n:,} value{'s' if n != 1 else ''} of {c}" for c, n in sorted(lost.get("values", {}).items())]
    if not parts:
        return "destroys no data"
    return "destroys " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])


def schema_differences(expected: Schema, found: Schema) -> list[str]:
    """Human-readable differences between two schemas, e.g. 'customers.email: nullable True instead of False'."""
    diffs: list[str] = []
    for table in sorted(set(expected) | set(found)):
        if table not in found:
            diffs.append(f"table {table} is missing")
            continue
        if table not in expected:
            diffs.append(f"table {table} is extra")
            continue
        want, got = expected[table], found[table]
        for column in sorted(set(want["columns"]) | set(got["columns"])):
            a, b = want["columns"].get(column), got["columns"].get(column)
            if a is None:
                diffs.append(f"{table}.{column} is extra")
            elif b is None:
                diffs.append(f"{table}.{column} is missing")
            else:
                for key in ("type", "nullable"):
                    if a[key] != b[key]:
                        diffs.append(f"{table}.{column}: {key} {b[key]} instead of {a[key]}")
        for key in ("primary_key", "indexes", "uniques", "foreign_keys"):
            if want[key] != got[key]:
                diffs.append(f"{table}: {key.replace('_', ' ')} {got[key]} instead of {want[key]}")
    return diffs


def lost_for_good(before: Measure, after: Measure) -> tuple[dict[str, int], dict[str, int]]:
    """After a round trip: rows per table and non-null values per column that did not come back."""
    rows: dict[str, int] = {}
    values: dict[str, int] = {}
    for table, measured in before.items():
        back = after.get(table, {"rows": 0, "values": {}})
        if measured["rows"] > back["rows"]:
            rows[table] = measured["rows"] - back["rows"]
        for column, count in measured["values"].items():
            missing = count - back["values"].get(column, 0)
            if missing > 0:
                values[f"{table}.{column}"] = missing
    return rows, values


# ------------------------------------------------------------------ pg_dump --schema-only
_RANDOM_LINES = re.compile(r"^(\\restrict|\\unrestrict)\b")


def _normalise(text: str) -> list[str]:
    """pg_dump's schema text without its random \\restrict keys, comments and blank lines."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith("--") and not _RANDOM_LINES.match(line)
    ]


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(env), check=False, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OpsError(f"Cannot run {what}: {exc}.") from exc
    if done.returncode != 0:
        raise OpsError(f"{what} failed (exit {done.returncode}): {mask_url(done.stderr.strip())}")
    return done.stdout


def snapshot_schema_text(path: Path) -> str:
    """The schema held in a custom-format archive (`pg_restore --schema-only --file=-`)."""
    cmd = [settings.OPS_PG_RESTORE, "--schema-only", "--no-owner", "--no-privileges", "--file=-", "--", str(path)]
    return _run(cmd, {}, "pg_restore --schema-only")


def database_schema_text(url: str) -> str:
    """`pg_dump --schema-only` of a database."""
    conninfo, env = libpq_target(url)
    cmd = [settings.OPS_PG_DUMP, "--schema-only", "--no-owner", "--no-privileges", "--no-password"]
    cmd += [f"--dbname={conninfo}"]
    return _run(cmd, env, "pg_dump --schema-only")


def schema_text_diff(expected: str, found: str, *, limit: int = 200) -> str:
    """A unified diff of two pg_dump schema texts, ignoring \\restrict lines and comments; '' when equal."""
    lines = list(
        difflib.unified_diff(_normalise(expected), _normalise(found), "snapshot", "after round trip", lineterm="", n=1)
    )
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more lines)"]
    return "\n".join(lines)
