"""The plan of a downgrade: offline SQL preview, destructive-change analysis, plan hash.

The preview is what `alembic downgrade --sql <heads>:<to>` prints, rendered
through Alembic's own EnvironmentContext (exactly what `command.downgrade`
does) so several starting heads can be given as a tuple, which the
`from:to` string form cannot express. While rendering, the reverted steps and
the heads after the last step are recorded from Alembic itself, so the
executor knows which heads to expect in `alembic_version` afterwards.

The analysis reads the preview statement by statement. It never runs the
preview: it only counts rows in the tables the preview would destroy or
change, with identifiers quoted by the target dialect's own preparer. For a
DELETE or UPDATE with a WHERE clause it counts the rows that WHERE matches
(never the whole table), in a READ ONLY transaction under a short
`statement_timeout`; a WHERE that cannot be counted that way is reported as
"not counted (table has N rows)".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from opsapp.services.alembic_api import connect, make_config
from opsapp.services.errors import OpsError, RevisionResolutionError, ScriptDirectoryError
from opsapp.services.rollback.fingerprint import StepMark, fingerprint, step_digests
from opsapp.targets import TargetConfig, mask_url

_preview = threading.local()


class _OfflinePreviewLogFilter(logging.Filter):
    """Alembic logs "Running downgrade ..." while rendering offline SQL too.

    Said plainly in the log, so nobody reading it believes a downgrade ran.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_preview, "active", False):
            record.msg = f"[offline SQL preview, nothing executed] {record.msg}"
        return True


logging.getLogger("alembic.runtime.migration").addFilter(_OfflinePreviewLogFilter())


@dataclass
class Preview:
    """The rendered offline SQL of a downgrade and what Alembic reported while rendering it."""

    sql: str
    sha256: str
    steps: list[str] = field(default_factory=list)
    expected_heads: list[str] = field(default_factory=list)
    version_table: str = "alembic_version"
    # Deterministic across processes (rollback.fingerprint): what gate "plan" compares.
    step_digests: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""


def _render_error(config: TargetConfig, exc: BaseException) -> OpsError:
    return ScriptDirectoryError(
        f"Target {config.name!r}: the offline SQL preview could not be rendered: {mask_url(str(exc))}",
        target=config.name,
    )


def render_preview(config: TargetConfig, from_heads: list[str], to_revision: str) -> Preview:
    """Render `downgrade --sql <from_heads>:<to_revision>` with Alembic; nothing touches the database.

    Raises RevisionResolutionError when Alembic refuses the range and
    ScriptDirectoryError when a migration file fails to load or render.
    """
    buf = io.StringIO()
    alembic_config = make_config(config, output_buffer=buf)
    try:
        script = ScriptDirectory.from_config(alembic_config)
    except CommandError as exc:
        raise _render_error(config, exc) from exc
    steps: list[str] = []
    heads_after: list[list[str]] = [list(from_heads)]
    version_table: list[str] = ["alembic_version"]
    version_schema: list[str | None] = [None]
    marks: list[StepMark] = []

    def record(*, ctx: Any, step: Any, heads: set[str], run_args: Any) -> None:
        steps.extend(step.up_revision_ids)
        heads_after.append(sorted(heads))
        version_table[0] = getattr(ctx, "version_table", "alembic_version")
        version_schema[0] = getattr(ctx, "version_table_schema", None)
        # Called after the step's statements and its bookkeeping are written.
        marks.append(StepMark(tuple(step.up_revision_ids), buf.tell(), tuple(sorted(heads))))

    def downgrade_fn(rev: Any, context: Any) -> Any:
        # Same work function as alembic.command.downgrade; the callback is
        # appended here because env.py's configure() resets on_version_apply.
        context.on_version_apply_callbacks = (*tuple(context.on_version_apply_callbacks or ()), record)
        return script._downgrade_revs(to_revision, rev)

    starting = tuple(from_heads) if from_heads else None
    _preview.active = True
    try:
        with EnvironmentContext(
            alembic_config,
            script,
            fn=downgrade_fn,
            as_sql=True,
            starting_rev=starting,
            destination_rev=to_revision,
        ):
            script.run_env()
    except CommandError as exc:
        raise RevisionResolutionError(
            f"Alembic refuses the downgrade {','.join(from_heads) or 'base'} -> {to_revision}: {exc}",
            target=config.name,
            revision=to_revision,
        ) from exc
    except OpsError:
        raise
    except Exception as exc:  # a migration file failing to import or render
        raise _render_error(config, exc) from exc
    finally:
        _preview.active = False
    sql = buf.getvalue()
    digests = step_digests(
        sql,
        marks,
        split=lambda chunk: [st.sql for st in split_statements(chunk)],
        version_table=version_table[0],
        version_schema=version_schema[0],
    )
    return Preview(
        sql=sql,
        sha256=hashlib.sha256(sql.encode()).hexdigest(),
        steps=steps,
        expected_heads=heads_after[-1],
        version_table=version_table[0],
        step_digests=digests,
        fingerprint=fingerprint(digests),
    )


def compute_plan_hash(
    *,
    target: str,
    from_heads: list[str],
    to_revision: str,
    steps: list[str],
    sql_sha256: str,
    fingerprint: str,
    plan_fingerprint: str = "",
) -> str:
    """SHA-256 over everything the code is bound to: a changed plan invalidates the code."""
    payload = {
        "target": target,
        "from_heads": sorted(from_heads),
        "to_revision": to_revision,
        "steps": list(steps),
        "sql_sha256": sql_sha256,
        "fingerprint": fingerprint,
        "plan_fingerprint": plan_fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------- statements
@dataclass
class Statement:
    sql: str
    revision: str  # the step whose downgrade emitted it ("" outside any step)


_RUNNING = re.compile(r"^--\s*Running downgrade\s+(?P<from>[^\s,]+)")


def split_statements(sql: str) -> list[Statement]:
    """Split offline output into statements (terminated by `;` at a line end), tagged by step."""
    statements: list[Statement] = []
    revision = ""
    buf: list[str] = []
    for line in sql.splitlines():
        stripped = line.strip()
        if not buf and stripped.startswith("--"):
            match = _RUNNING.match(stripped)
            if match:
                revision = match["from"]
            continue
        if not buf and not stripped:
            continue
        buf.append(line)
        if stripped.endswith(";"):
            text = "\n".join(buf).strip()
            statements.append(Statement(text[:-1].strip(), revision))
            buf = []
    if buf:
        statements.append(Statement("\n".join(buf).strip(), revision))
    return statements


_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_QNAME = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"
_DROP_TABLE = re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?P<names>{_QNAME}(?:\s*,\s*{_QNAME})*)", re.I | re.S)
_ALTER_TABLE = re.compile(
    rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{_QNAME})\s+(?P<rest>.*)$", re.I | re.S
)
_DROP_COLUMN = re.compile(rf"\bDROP\s+COLUMN\s+(?:IF\s+EXISTS\s+)?(?P<col>{_IDENT})", re.I)
_ALTER_TYPE = re.compile(rf"\bALTER\s+(?:COLUMN\s+)?(?P<col>{_IDENT})\s+(?:SET\s+DATA\s+)?TYPE\b", re.I)
_RENAME_TO = re.compile(rf"^\s*RENAME\s+TO\s+(?P<new>{_IDENT})", re.I)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?(?P<names>{_QNAME}(?:\s*,\s*{_QNAME})*)", re.I | re.S)
_DELETE = re.compile(rf"^DELETE\s+FROM\s+(?:ONLY\s+)?(?P<table>{_QNAME})(?P<rest>.*)$", re.I | re.S)
_UPDATE = re.compile(rf"^UPDATE\s+(?:ONLY\s+)?(?P<table>{_QNAME})(?P<rest>.*)$", re.I | re.S)
_ADD_VALUE = re.compile(r"^ALTER\s+TYPE\s+.*\bADD\s+VALUE\b", re.I | re.S)
_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.I)
_REFRESH_MATVIEW = re.compile(r"^REFRESH\s+MATERIALIZED\s+VIEW\b", re.I)
_NEVER_IN_TX = re.compile(
    r"^(VACUUM|CREATE\s+DATABASE|DROP\s+DATABASE|ALTER\s+SYSTEM|CREATE\s+TABLESPACE|DROP\s+TABLESPACE"
    r"|REINDEX\s+(SYSTEM|DATABASE))\b",
    re.I,
)
_BATCH_TMP = "_alembic_tmp_"


def _split_qnames(text: str) -> list[str]:
    return re.findall(_QNAME, text)


def _unquote(ident: str, *, fold: bool) -> str:
    ident = ident.strip()
    if ident.startswith('"') and ident.endswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.lower() if fold else ident


def _parse_qname(qname: str, *, fold: bool) -> tuple[str | None, str]:
    parts = re.findall(_IDENT, qname)
    names = [_unquote(p, fold=fold) for p in parts]
    return (names[0], names[1]) if len(names) == 2 else (None, names[0])


def _short(sql: str, limit: int = 200) -> str:
    one_line = " ".join(sql.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


def find_destructive(statements: list[Statement], *, dialect: str, version_table: str) -> list[dict[str, Any]]:
    """Every DROP TABLE, DROP COLUMN, TRUNCATE, DELETE, UPDATE and ALTER ... TYPE, row counts still empty."""
    fold = dialect == "postgresql"  # unquoted identifiers fold to lower case on PostgreSQL
    renamed_from_tmp = set()
    for st in statements:
        match = _ALTER_TABLE.match(st.sql)
        if match and _RENAME_TO.match(match["rest"]):
            _, old = _parse_qname(match["table"], fold=fold)
            if old.startswith(_BATCH_TMP):
                renamed_from_tmp.add(_unquote(_RENAME_TO.match(match["rest"])["new"], fold=fold))
    found: list[dict[str, Any]] = []

    def add(st: Statement, kind: str, qname: str, column: str | None = None, note: str = "", **extra: Any) -> None:
        schema, table = _parse_qname(qname, fold=fold)
        if table.startswith(_BATCH_TMP) or table == version_table:
            return
        found.append(
            {
                "revision": st.revision,
                "kind": kind,
                "schema": schema,
                "table": table,
                "column": _unquote(column, fold=fold) if column else None,
                "statement": st.sql,
                "summary": _short(st.sql),
                "rows": None,
                "table_rows": None,
                "non_null": None,
                "note": note,
                **extra,
            }
        )

    for st in statements:
        if m := _DROP_TABLE.match(st.sql):
            for qname in _split_qnames(m["names"]):
                _, table = _parse_qname(qname, fold=fold)
                if table in renamed_from_tmp:
                    add(st, "REBUILD TABLE", qname, note="batch move-and-copy: rows are copied to a rebuilt table")
                else:
                    add(st, "DROP TABLE", qname)
        elif m := _TRUNCATE.match(st.sql):
            for qname in _split_qnames(m["names"]):
                add(st, "TRUNCATE", qname)
        elif m := _DELETE.match(st.sql):
            add(st, "DELETE", m["table"], **_where_parts(m["table"], m["rest"], "DELETE"))
        elif m := _UPDATE.match(st.sql):
            add(st, "UPDATE", m["table"], **_where_parts(m["table"], m["rest"], "UPDATE"))
        elif m := _ALTER_TABLE.match(st.sql):
            for col in _DROP_COLUMN.finditer(m["rest"]):
                add(st, "DROP COLUMN", m["table"], col["col"])
            for col in _ALTER_TYPE.finditer(m["rest"]):
                add(st, "ALTER TYPE", m["table"], col["col"])
    return found


# ----------------------------------------------------------------- WHERE clauses
_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_ALIAS = re.compile(rf"^\s*(?:AS\s+)?(?P<alias>{_IDENT})\s*$", re.I)


def _top_level_keywords(text: str) -> list[tuple[str, int]]:
    """(UPPER keyword, offset) of every bare word outside quotes, comments and parentheses."""
    found: list[tuple[str, int]] = []
    depth, i, n = 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            end = i + 1
            while end < n:
                if text[end] == ch:
                    if end + 1 < n and text[end + 1] == ch:  # doubled quote inside the literal
                        end += 2
                        continue
                    break
                end += 1
            i = end + 1
        elif ch == "$" and (m := re.match(r"\$[A-Za-z_0-9]*\$", text[i:])):
            close = text.find(m.group(), i + len(m.group()))
            i = n if close < 0 else close + len(m.group())
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif ch == "(":
            depth, i = depth + 1, i + 1
        elif ch == ")":
            depth, i = depth - 1, i + 1
        elif (m := _KEYWORD.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_$")):
            if depth == 0:
                found.append((m.group().upper(), i))
            i = m.end()
        else:
            i += 1
    return found


def _where_parts(table_sql: str, rest: str, kind: str) -> dict[str, Any]:
    """The WHERE clause of a DELETE/UPDATE (after `table_sql`) and the count query for it, if one is safe.

    `where` is the clause as written ("" without one); `count_sql` is
    `SELECT count(*) FROM <table> [alias] WHERE <where>`, or "" when the
    statement joins other tables (USING / FROM), returns rows, uses a cursor,
    or holds more than one statement: such a WHERE is not counted.
    """
    words = _top_level_keywords(rest)
    where_at = next((pos for word, pos in words if word == "WHERE"), None)
    if where_at is None:
        return {"where": "", "count_sql": ""}
    where = rest[where_at + len("WHERE") :].strip()
    head = rest[:where_at]
    head_words = {word for word, _ in _top_level_keywords(head)}
    tail_words = {word for word, _ in _top_level_keywords(where)}
    if kind == "UPDATE":
        set_at = next((pos for word, pos in words if word == "SET"), None)
        alias_text = head[:set_at] if set_at is not None else head
    else:
        alias_text = head
    countable = (
        not ({"USING", "FROM"} & head_words)
        and not ({"RETURNING", "CURRENT"} & tail_words)
        and ";" not in rest
        and (not alias_text.strip() or _ALIAS.match(alias_text))
    )
    if not countable:
        return {"where": where, "count_sql": ""}
    return {"where": where, "count_sql": f"SELECT count(*) FROM {table_sql} {alias_text.strip()} WHERE {where}"}


def find_non_transactional(statements: list[Statement], *, dialect: str, server_version: tuple | None) -> list[str]:
    """Reasons the preview cannot run inside one transaction (empty when it can)."""
    reasons: list[str] = []
    has_begin = any(st.sql.upper() in ("BEGIN", "BEGIN TRANSACTION", "START TRANSACTION") for st in statements)
    in_tx = False
    for st in statements:
        upper = " ".join(st.sql.split()).upper()
        where = f"{st.revision}: " if st.revision else ""
        if upper in ("BEGIN", "BEGIN TRANSACTION", "START TRANSACTION"):
            in_tx = True
            continue
        if upper in ("COMMIT", "END", "COMMIT TRANSACTION"):
            in_tx = False
            continue
        if dialect == "postgresql" and has_begin and not in_tx:
            # Offline autocommit_block() emits COMMIT ... BEGIN around its body.
            reasons.append(f"{where}runs outside the transaction (autocommit_block): {_short(st.sql, 120)}")
            continue
        if _CONCURRENTLY.search(st.sql) and not _REFRESH_MATVIEW.match(st.sql):
            reasons.append(f"{where}CONCURRENTLY cannot run inside a transaction: {_short(st.sql, 120)}")
        elif _NEVER_IN_TX.match(st.sql):
            reasons.append(f"{where}cannot run inside a transaction: {_short(st.sql, 120)}")
        elif dialect == "postgresql" and _ADD_VALUE.match(st.sql) and server_version and server_version < (12,):
            reasons.append(f"{where}ALTER TYPE ... ADD VALUE cannot run in a transaction before PostgreSQL 12")
    return reasons


# ----------------------------------------------------------------- live counts
# How long one WHERE count may run. The request waits for it, and a WHERE that
# needs longer is reported as "not counted" rather than guessed.
COUNT_TIMEOUT_MS = 5000


def _count_where(conn: sa.Connection, sql: str, *, postgresql: bool) -> int | None:
    """Run one WHERE count on the autocommit `conn` where it cannot write; None when it fails.

    The WHERE comes from the customer's migration: on PostgreSQL it runs in
    its own READ ONLY transaction (nextval or a writing function is refused)
    under COUNT_TIMEOUT_MS; on SQLite under `PRAGMA query_only`. The driver's
    own cursor runs it, so the WHERE's text is never read as parameters.
    """
    raw = conn.connection.driver_connection
    cursor = raw.cursor()
    try:
        if postgresql:
            cursor.execute("BEGIN READ ONLY")
            try:
                cursor.execute(f"SET LOCAL statement_timeout = {int(COUNT_TIMEOUT_MS)}")
                cursor.execute(sql)
                return int(cursor.fetchone()[0] or 0)
            finally:
                cursor.execute("ROLLBACK")
        cursor.execute("PRAGMA query_only = ON")
        try:
            cursor.execute(sql)
            return int(cursor.fetchone()[0] or 0)
        finally:
            cursor.execute("PRAGMA query_only = OFF")
    except Exception:  # noqa: BLE001 - any failure means "not counted", said on the plan
        return None
    finally:
        cursor.close()


def count_rows(config: TargetConfig, destructive: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], tuple | None]:
    """Fill `rows`, `table_rows` (and `non_null` for dropped columns) from the live target; returns the server version.

    `rows` is what the statement affects: the whole table for DROP,
    TRUNCATE and a DELETE/UPDATE without WHERE; the rows the WHERE matches
    otherwise (None, with the note "not counted (table has N rows)", when
    that count fails). Reads only, in autocommit so one failing count (a
    table the downgrade itself creates first) does not hide the others.
    """
    with connect(config, isolation_level="AUTOCOMMIT") as conn:
        preparer = conn.dialect.identifier_preparer
        server_version = conn.dialect.server_version_info
        if config.is_postgresql:
            conn.exec_driver_sql("SET statement_timeout = 60000")

        def table_of(item: dict[str, Any]) -> str:
            table = preparer.quote_identifier(item["table"])
            if item.get("schema"):
                table = f"{preparer.quote_identifier(item['schema'])}.{table}"
            return table

        # One scan per table: count(*) and count(col) of every dropped column together.
        dropped: dict[str, list[str]] = {}
        for item in destructive:
            columns = dropped.setdefault(table_of(item), [])
            if item["kind"] == "DROP COLUMN" and item["column"] not in columns:
                columns.append(item["column"])
        counts = {table: _count_table(conn, table, columns, preparer) for table, columns in dropped.items()}

        for item in destructive:
            table_rows, non_null = counts[table_of(item)]
            item["table_rows"] = table_rows
            if item["table_rows"] is None:
                item["note"] = (item["note"] + "; " if item["note"] else "") + "table not found in the live database"
            if item.get("where"):
                count_sql = item.pop("count_sql", "")
                if count_sql and item["table_rows"] is not None:
                    item["rows"] = _count_where(conn, count_sql, postgresql=config.is_postgresql)
                if item["rows"] is None and item["table_rows"] is not None:
                    note = f"not counted (table has {item['table_rows']} rows)"
                    item["note"] = (item["note"] + "; " if item["note"] else "") + note
            else:
                item.pop("count_sql", None)
                item["rows"] = item["table_rows"]
            if item["kind"] == "DROP COLUMN" and item["rows"] is not None:
                item["non_null"] = non_null.get(item["column"])
    return destructive, server_version


def _count_table(
    conn: sa.Connection, table: str, columns: list[str], preparer: Any
) -> tuple[int | None, dict[str, int | None]]:
    """(rows, non-null count per column) of `table` in one scan; (None, {}) when the table is missing.

    When the one scan fails (a column the downgrade itself adds first), each
    count runs alone so the others are still shown.
    """

    def scalars(sql: str) -> tuple | None:
        try:
            return tuple(conn.exec_driver_sql(sql).one())
        except sa.exc.DBAPIError:
            return None

    terms = ", ".join(f"count({preparer.quote_identifier(column)})" for column in columns)
    row = scalars(f"SELECT count(*){', ' + terms if terms else ''} FROM {table}")
    if row is not None:
        return int(row[0]), {column: int(value) for column, value in zip(columns, row[1:], strict=True)}
    alone = scalars(f"SELECT count(*) FROM {table}")
    if alone is None:
        return None, {}
    non_null = {}
    for column in columns:
        value = scalars(f"SELECT count({preparer.quote_identifier(column)}) FROM {table}")
        non_null[column] = None if value is None else int(value[0])
    return int(alone[0]), non_null


@dataclass
class Analysis:
    destructive: list[dict[str, Any]]
    non_transactional: list[str]


def analyze(config: TargetConfig, preview: Preview) -> Analysis:
    """Destructive statements with live counts, and non-transactional reasons, for `preview`."""
    statements = split_statements(preview.sql)
    dialect = "postgresql" if config.is_postgresql else "sqlite"
    destructive = find_destructive(statements, dialect=dialect, version_table=preview.version_table)
    destructive, server_version = count_rows(config, destructive)
    return Analysis(destructive, find_non_transactional(statements, dialect=dialect, server_version=server_version))


def non_transactional_reasons(config: TargetConfig, sql: str, server_version: tuple | None = None) -> list[str]:
    dialect = "postgresql" if config.is_postgresql else "sqlite"
    return find_non_transactional(split_statements(sql), dialect=dialect, server_version=server_version)
