"""Export audit events for auditors: CSV or JSON Lines, streamed.

Rows leave in `seq` order, so memory stays constant however many events
there are (1,000,000 is fine). Every row carries the hashed fields exactly as
hashed plus `key_id`, `hash` and `mac`, so the file verifies offline
(docs/audit.md: the standard-library snippet, or offline.py against the
signed checkpoints).

CSV on PostgreSQL is PostgreSQL's own `COPY (SELECT ...) TO STDOUT CSV`,
streamed in ~256 KB chunks: Python formatting each row capped the export at
~0.07x the speed of COPY. The columns are formatted by the same SQL the chain
verifier reads them with (chain.pg_column); `detail` is the stored JSON as
PostgreSQL prints it, which the verifiers parse and re-serialize canonically,
exactly as verify_chain does with the same text. That CSV ends lines with LF
and quotes empty strings (`""`, while NULL is an empty cell); a CSV reader
gives back the same values as from the Python writer that SQLite and JSON
Lines still use (keyset pagination in batches).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import IO, Any

from django.db import connection
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.chain import EXPORT_FIELDS, iso_utc, pg_column
from opsapp.services.audit.log import append_event

FORMATS = ("csv", "jsonl")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
BATCH_SIZE = 2000
COPY_CHUNK_BYTES = 256 * 1024

_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def parse_when(value: str, *, end: bool = False) -> datetime:
    """A --since/--until value: YYYY-MM-DD or an ISO 8601 date-time.

    A bare date means the start of that day, or with `end=True` the start of
    the next day (so `--until 2026-03-31` includes all of March 31). Naive
    values are in settings.TIME_ZONE. Raises ValueError with a clear message.
    """
    text = (value or "").strip()
    problem = f"{value!r} is not a date (use YYYY-MM-DD or an ISO 8601 date-time such as 2026-03-31T12:00:00Z)"
    try:
        day = parse_date(text)
        moment = None if day else parse_datetime(text)
    except ValueError:
        raise ValueError(problem) from None
    if day is not None:
        moment = datetime.combine(day + timedelta(days=1) if end else day, time.min)
    if moment is None:
        raise ValueError(problem)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def filter_events(
    since: datetime | date | None = None, until: datetime | date | None = None, target: str | None = None
) -> QuerySet[AuditEvent]:
    """Events with since <= created_at < until, of one target when given."""
    qs = AuditEvent.objects.all()
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if until is not None:
        qs = qs.filter(created_at__lt=until)
    if target:
        qs = qs.filter(target_name=target)
    return qs


def iter_export_rows(qs: QuerySet[AuditEvent], *, batch_size: int = BATCH_SIZE) -> Iterator[dict[str, Any]]:
    """Each event of `qs` as a dict of EXPORT_FIELDS, oldest first, in keyset batches."""
    qs = qs.order_by("seq")
    after = 0
    while True:
        rows = list(qs.filter(seq__gt=after).values_list(*EXPORT_FIELDS)[:batch_size])
        if not rows:
            return
        for row in rows:
            event = dict(zip(EXPORT_FIELDS, row, strict=True))
            event["created_at"] = iso_utc(event["created_at"])
            yield event
        after = rows[-1][0]


def _csv_cell(name: str, value: Any) -> Any:
    if name == "detail":
        return _encode(value)
    return "" if value is None else value


def iter_csv(qs: QuerySet[AuditEvent], *, batch_size: int = BATCH_SIZE) -> Iterator[str]:
    """CSV text in chunks: a header row, then one row per event (detail as canonical JSON)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_FIELDS)
    for n, event in enumerate(iter_export_rows(qs, batch_size=batch_size), start=1):
        writer.writerow([_csv_cell(name, event[name]) for name in EXPORT_FIELDS])
        if n % batch_size == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _copy_statement(qs: QuerySet[AuditEvent]) -> str:
    """COPY (the rows of `qs`, EXPORT_FIELDS as the chain reads them, oldest first) TO STDOUT as CSV.

    COPY takes no bound parameters, so psycopg's client-side binding quotes
    the filter values into the statement (the admin's search words among them).
    """
    from psycopg import ClientCursor

    columns = {
        f"export_{name}": RawSQL("detail::text" if name == "detail" else pg_column(name), ()) for name in EXPORT_FIELDS
    }
    rows = qs.order_by("seq").annotate(**columns).values_list(*columns)
    sql, params = rows.query.sql_with_params()
    connection.ensure_connection()
    select = ClientCursor(connection.connection).mogrify(sql, params)
    return f"COPY ({select}) TO STDOUT WITH (FORMAT csv)"


def iter_csv_copy(qs: QuerySet[AuditEvent]) -> Iterator[str]:
    """CSV text in chunks from PostgreSQL's COPY: a header row, then one row per event."""
    statement = _copy_statement(qs)
    yield ",".join(EXPORT_FIELDS) + "\n"
    chunk: list[bytes] = []
    size = 0
    # Django's debug cursor (DEBUG=1) wraps copy() with the statement alone, hence no params here.
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        for data in copy:
            chunk.append(bytes(data))
            size += len(data)
            if size >= COPY_CHUNK_BYTES:
                yield b"".join(chunk).decode("utf-8")
                chunk.clear()
                size = 0
    if chunk:
        yield b"".join(chunk).decode("utf-8")


def iter_jsonl(qs: QuerySet[AuditEvent], *, batch_size: int = BATCH_SIZE) -> Iterator[str]:
    """JSON Lines text in chunks: one object per event."""
    chunk: list[str] = []
    for event in iter_export_rows(qs, batch_size=batch_size):
        chunk.append(_encode(event) + "\n")
        if len(chunk) >= batch_size:
            yield "".join(chunk)
            chunk = []
    if chunk:
        yield "".join(chunk)


def iter_export(fmt: str, qs: QuerySet[AuditEvent]) -> Iterator[str]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (use one of: {', '.join(FORMATS)})")
    return _csv(qs) if fmt == "csv" else iter_jsonl(qs)


def _csv(qs: QuerySet[AuditEvent]) -> Iterator[str]:
    return iter_csv_copy(qs) if connection.vendor == "postgresql" else iter_csv(qs)


def export_csv(stream: IO[str], qs: QuerySet[AuditEvent]) -> None:
    for chunk in _csv(qs):
        stream.write(chunk)


def export_jsonl(stream: IO[str], qs: QuerySet[AuditEvent]) -> None:
    for chunk in iter_jsonl(qs):
        stream.write(chunk)


def start_export(qs: QuerySet[AuditEvent], *, fmt: str, actor: Actor, filters: dict[str, Any]) -> QuerySet[AuditEvent]:
    """Audit the export (AUDIT_EXPORTED), then return `qs` bounded to the events that existed before it.

    Raises whatever append_event raises: an export that cannot be audited does not happen.
    """
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    described = ", ".join(f"{k}={v}" for k, v in filters.items() if v not in (None, "", [])) or "no filters"
    append_event(
        action=AuditAction.AUDIT_EXPORTED,
        outcome=AuditOutcome.INFO,
        actor=actor,
        message=f"audit log exported as {fmt} ({described}), events up to #{head}",
        detail={"format": fmt, "filters": filters, "up_to_seq": head},
    )
    return qs.filter(seq__lte=head)
