"""Rehearsal results in words, and the rule gate "rehearsal" applies. Reads the console's rows only."""

from __future__ import annotations

from django.conf import settings

from opsapp.models import Rehearsal, RehearsalStatus, RollbackRequest
from opsapp.services.rehearsal.compare import loss_summary


def rehearsal_required(is_postgresql: bool) -> bool:
    """OPS_REQUIRE_REHEARSAL, or when unset: on for PostgreSQL targets with DEBUG off."""
    required = settings.OPS_REQUIRE_REHEARSAL
    if required is None:
        return is_postgresql and not settings.DEBUG
    return bool(required)


def latest_rehearsal(request: RollbackRequest) -> Rehearsal | None:
    """The newest finished rehearsal of the request's stored plan on its attached snapshot."""
    if request.snapshot_id is None:
        return None
    return (
        Rehearsal.objects.filter(
            request=request, snapshot_id=request.snapshot_id, plan_fingerprint=request.plan_fingerprint
        )
        .exclude(status=RehearsalStatus.RUNNING)
        .order_by("-started_at", "-id")
        .first()
    )


def result_line(rehearsal: Rehearsal) -> str:
    """'rehearsed on a copy of snapshot #12: OK in 3.2 s; destroys 8,120 rows of refunds and 100 values of accounts.email'."""
    where = f"rehearsed on a copy of snapshot #{rehearsal.snapshot_id}"
    seconds = f"{(rehearsal.duration_ms or 0) / 1000:.1f} s"
    if rehearsal.status == RehearsalStatus.SUCCEEDED:
        line = f"{where}: OK in {seconds}; {loss_summary(rehearsal.destroyed)}"
        report = rehearsal.round_trip_report or {}
        if rehearsal.round_trip and report:
            line += "; round trip OK" if report.get("ok") else "; round trip FAILED: " + round_trip_problems(report)
        return line
    if rehearsal.status == RehearsalStatus.RUNNING:
        return f"{where}: still running ({rehearsal.progress or 'starting'})"
    return f"{where}: FAILED after {seconds}: {failure_text(rehearsal)}"


def failure_text(rehearsal: Rehearsal) -> str:
    parts = []
    if rehearsal.failed_revision:
        parts.append(f"in revision {rehearsal.failed_revision}")
    if rehearsal.sqlstate:
        parts.append(f"SQLSTATE {rehearsal.sqlstate}")
    if rehearsal.failed_statement:
        statement = rehearsal.failed_statement
        parts.append(f"on: {statement if len(statement) <= 300 else statement[:299] + '…'}")
    head = ", ".join(parts)
    return f"{head}: {rehearsal.error}" if head else rehearsal.error


def round_trip_problems(report: dict) -> str:
    problems = [
        f"down/up of {', '.join(m['revisions'])} does not restore the schema ({'; '.join(m.get('differences') or [m.get('error', '')])})"
        for m in report.get("migrations", [])
    ]
    if report.get("rows") or report.get("values"):
        problems.append("lost for good: " + loss_summary(report).removeprefix("destroys "))
    if report.get("schema_diff"):
        problems.append("pg_dump --schema-only differs from the snapshot's")
    if report.get("error"):
        problems.append(report["error"])
    return "; ".join(problems) or "see the report"


def static_differences(request: RollbackRequest, rehearsal: Rehearsal) -> list[str]:
    """Where the static analysis (request.destructive) and the measured losses disagree."""
    if rehearsal.status != RehearsalStatus.SUCCEEDED:
        return []
    diffs: list[str] = []
    measured = rehearsal.destroyed or {}
    static_tables: set[str] = set()
    static_columns: set[str] = set()
    for item in request.destructive or []:
        kind = str(item.get("kind", "")).upper()
        if kind in ("DELETE", "TRUNCATE", "UPDATE"):
            if kind == "TRUNCATE":
                static_tables.add(item["table"])
            continue
        if kind == "DROP COLUMN" and item.get("column"):
            static_columns.add(f"{item['table']}.{item['column']}")
            if item.get("non_null") is not None and measured.get("values", {}).get(
                f"{item['table']}.{item['column']}", 0
            ) != int(item["non_null"]):
                diffs.append(
                    f"{item['table']}.{item['column']}: the analysis counted {item['non_null']} non-null values, "
                    f"the rehearsal destroyed {measured.get('values', {}).get(item['table'] + '.' + item['column'], 0)}"
                )
        elif kind == "DROP TABLE":
            static_tables.add(item["table"])
            rows = measured.get("rows", {}).get(item["table"], 0)
            if item.get("rows") is not None and int(item["rows"]) != rows:
                diffs.append(
                    f"{item['table']}: the analysis counted {item['rows']} rows, the rehearsal destroyed {rows}"
                )
    for table in measured.get("tables", []):
        if table not in static_tables:
            diffs.append(f"table {table} disappears, which the static analysis did not find")
    for column in measured.get("columns", []):
        if column not in static_columns and column.split(".", 1)[0] not in measured.get("tables", []):
            diffs.append(f"column {column} disappears, which the static analysis did not find")
    deleting = {item["table"] for item in request.destructive or [] if str(item.get("kind", "")).upper() == "DELETE"}
    for table, rows in measured.get("rows", {}).items():
        if table not in measured.get("tables", []) and table not in static_tables | deleting:
            diffs.append(f"{rows} rows of {table} are deleted, which the static analysis did not count")
    return diffs
