"""A rehearsal as JSON: the one shape `rehearse_rollback --json` prints and the evidence bundle signs.

The bundle's rehearsals.json adds, per rehearsal, only what the bundle alone
knows (the operation that ran it and the seqs of its audit events); every
other key comes from `rehearsal_document`, so the two can never drift apart.

`schema_sha256` is what ties a rehearsal's recorded schema to the audit chain:
the rehearsal's `rehearsal_succeeded` event carries the same digest in its
detail, and the offline verifier (services/audit/offline.py) recomputes it
from the bundle. It must stay byte-for-byte what offline.canonical hashes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from opsapp.models import Rehearsal, RehearsalStatus
from opsapp.services.audit.chain import canonical_encoder, iso_utc
from opsapp.services.rehearsal.summary import result_line


def schema_sha256(schema: Any) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no whitespace, UTF-8) of a recorded schema."""
    return hashlib.sha256(canonical_encoder(schema).encode("utf-8")).hexdigest()


def rehearsal_document(rehearsal: Rehearsal) -> dict[str, Any]:
    """Everything recorded about one rehearsal, JSON-ready; `message` is its result in words."""
    return {
        "id": rehearsal.pk,
        "request": rehearsal.request_id,
        "snapshot": rehearsal.snapshot_id,
        "status": rehearsal.status,
        "message": result_line(rehearsal),
        "started_by": rehearsal.started_by,
        "started_at": iso_utc(rehearsal.started_at) if rehearsal.started_at else None,
        "finished_at": iso_utc(rehearsal.finished_at) if rehearsal.finished_at else None,
        "plan_fingerprint": rehearsal.plan_fingerprint,
        "script_fingerprint": rehearsal.script_fingerprint,
        "isolation_level": rehearsal.isolation_level,
        "server": rehearsal.server,
        "round_trip": rehearsal.round_trip,
        "restore_ms": rehearsal.restore_ms,
        "downgrade_ms": rehearsal.downgrade_ms,
        "duration_ms": rehearsal.duration_ms,
        "steps": rehearsal.steps,
        "failed_revision": rehearsal.failed_revision,
        "failed_statement": rehearsal.failed_statement,
        "sqlstate": rehearsal.sqlstate,
        "error": rehearsal.error,
        "rows_before": rehearsal.rows_before,
        "rows_after": rehearsal.rows_after,
        "destroyed": rehearsal.destroyed,
        "schema_after": rehearsal.schema_after,
        "schema_after_sha256": schema_sha256(rehearsal.schema_after)
        if rehearsal.status == RehearsalStatus.SUCCEEDED
        else None,
        "round_trip_report": rehearsal.round_trip_report if rehearsal.round_trip else None,
    }
