"""An evidence bundle for one rollback request: one zip an auditor verifies offline.

Members (all stored uncompressed, so a damaged byte names its member):
- request.json:   the request and its reason; the plan (from-heads, steps, SQL
                  preview with its SHA-256, destructive analysis); the code's
                  issue, recipients, expiry and attempts (never the code nor its
                  hash); the snapshot's metadata and checksum;
- rehearsals.json: every rehearsal of the request (issue 14): what it ran
                  on (snapshot, plan fingerprint, server), its outcome and
                  what it measured, the operation that ran it, and the seqs of
                  its own audit events (all of which are in events.jsonl);
- events.jsonl:   every audit event from the request's first one up to the
                  nearest signed checkpoint, as exported (hash, key id, MAC);
- checkpoint.json: that checkpoint, exactly as published, with its signature;
- public_key.pem: the checkpoint public key (the auditor checks it against
                  the one they were handed);
- README.txt:     how to check it;
- MANIFEST.json + MANIFEST.sig: the SHA-256 of every member, signed with the
                  checkpoint key.

`offline.verify_bundle` (also `manage.py verify_evidence`) checks all of it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from opsapp.models import AuditAction, AuditEvent, AuditOutcome, Operation, OperationKind, RollbackRequest
from opsapp.services.actors import Actor
from opsapp.services.audit.chain import DETAIL, ROW_FIELDS, batches, canonical_encoder, iso_utc
from opsapp.services.audit.checkpoints import Checkpoint, load_checkpoints, read_checkpoint_document
from opsapp.services.audit.keys import public_key, public_key_pem, signing_key
from opsapp.services.audit.log import append_event
from opsapp.services.audit.offline import BUNDLE_FORMAT
from opsapp.services.audit.verify import run_verification
from opsapp.services.errors import AuditError
from opsapp.services.rehearsal.document import rehearsal_document

README = """Evidence bundle for rollback request #{request_id} of target {target}
Made {made} by {actor} with the ops console.

What it holds
  request.json     the request, its plan, SQL preview (with SHA-256), destructive analysis,
                   verification-code metadata (never the code) and the snapshot's metadata
  rehearsals.json  every rehearsal of the request: outcome, durations, rows and values destroyed,
                   the operation that ran it and the seqs of its audit events in events.jsonl
  events.jsonl     audit events #{first}..#{last}: every event of the request ({count}) and the
                   chain linking them to the signed checkpoint
  checkpoint.json  the checkpoint of event #{last}, signed with the console's Ed25519 key
  public_key.pem   that key's public half (compare it with the one you were given)
  MANIFEST.json    SHA-256 of every member; MANIFEST.sig is its signature

How to check it (no database, no console code; Python 3 and the `cryptography` package):
  python3 verify_audit_evidence.py THIS.zip --public-key THE-KEY-YOU-WERE-GIVEN.pem
verify_audit_evidence.py is opsapp/services/audit/offline.py of the console (docs/audit.md).
It exits 0 when the bundle is intact and 1 naming each changed member or event.
"""


def _iso(value: datetime | None) -> str | None:
    return iso_utc(value) if value else None


def request_facts(request: RollbackRequest) -> dict[str, Any]:
    """What request.json says about the request (never the code or its hash)."""
    snapshot = request.snapshot
    return {
        "request": {
            "id": request.pk,
            "target": request.target.name,
            "status": request.status,
            "requested_by": request.requested_by_username,
            "reason": request.reason,
            "created_at": _iso(request.created_at),
            "started_at": _iso(request.started_at),
            "finished_at": _iso(request.finished_at),
            "executed_by": request.executed_by_username,
            "attempts": request.attempts,
            "final_heads": request.final_heads,
            "error": request.error,
        },
        "plan": {
            "to_revision_input": request.to_revision_input,
            "to_revision": request.to_revision,
            "from_heads": request.from_heads,
            "steps": request.steps,
            "sql_preview": request.sql_preview,
            "sql_sha256": request.sql_sha256,
            "sql_preview_sha256_recomputed": hashlib.sha256(request.sql_preview.encode()).hexdigest(),
            "plan_fingerprint": request.plan_fingerprint,
            "destructive": request.destructive,
            "non_transactional": request.non_transactional,
        },
        "code": {
            "issued_at": _iso(request.code_issued_at),
            "expires_at": _iso(request.code_expires_at),
            "used_at": _iso(request.code_used_at),
            "attempts": request.code_attempts,
            "recipients": request.code_recipients,
        },
        "snapshot": None
        if snapshot is None
        else {
            "id": snapshot.pk,
            "status": snapshot.status,
            "format": snapshot.format,
            "taken_by": snapshot.taken_by,
            "started_at": _iso(snapshot.started_at),
            "finished_at": _iso(snapshot.finished_at),
            "verified_at": _iso(snapshot.verified_at),
            "size": snapshot.size,
            "sha256": snapshot.sha256,
            "heads": snapshot.heads,
        },
    }


def rehearsal_facts(request: RollbackRequest) -> list[dict[str, Any]]:
    """What rehearsals.json says: each rehearsal of the request, oldest first (rehearsal_document's keys),
    plus the operation that ran it and the seqs of its audit events."""
    events: dict[int, list[int]] = {}
    for seq, detail in (
        AuditEvent.objects.filter(request_id=request.pk, action__startswith="rehearsal_")
        .order_by("seq")
        .values_list("seq", "detail")
    ):
        rehearsal_id = (detail or {}).get("rehearsal") if isinstance(detail, dict) else None
        if rehearsal_id is not None:
            events.setdefault(int(rehearsal_id), []).append(seq)
    operations: dict[int, Operation] = {}
    for op in Operation.objects.filter(request=request, kind=OperationKind.REHEARSAL).order_by("id"):
        if isinstance(op.result, dict) and op.result.get("rehearsal") is not None:
            operations[int(op.result["rehearsal"])] = op
    facts = []
    for rehearsal in request.rehearsals.order_by("started_at", "id"):
        op = operations.get(rehearsal.pk)
        facts.append(
            {
                **rehearsal_document(rehearsal),
                "operation": None
                if op is None
                else {
                    "id": op.pk,
                    "state": op.state,
                    "requested_by": op.requested_by_username,
                    "queued_at": _iso(op.queued_at),
                    "worker": f"{op.worker_host}:{op.worker_pid}" if op.worker_pid else "",
                },
                "audit_events": events.get(rehearsal.pk, []),
            }
        )
    return facts


def _segment(first: int, last: int) -> list[dict[str, Any]]:
    events = []
    for rows in batches(first - 1, 5000):
        for row in rows:
            if row[0] > last:
                return events
            event = dict(zip(ROW_FIELDS, row, strict=True))
            detail = row[DETAIL]
            event["detail"] = json.loads(detail) if isinstance(detail, str) else detail
            events.append(event)
    return events


def _covering_checkpoint(last_seq: int, actor: Actor) -> Checkpoint:
    """The oldest signed checkpoint at or after `last_seq`; verify and sign a new one when none is."""
    covering = [c for c in load_checkpoints(settings.OPS_AUDIT_CHECKPOINT_DIR, public_key()) if c.seq >= last_seq]
    if covering:
        return min(covering, key=lambda c: c.seq)
    result = run_verification(actor=actor)
    if not result.ok:
        raise AuditError(f"the audit log does not verify, no evidence can be signed: {result.message}")
    if not result.checkpoint_written:
        raise AuditError("no signed checkpoint covers these events and this host has no signing key")
    return min(
        (c for c in load_checkpoints(settings.OPS_AUDIT_CHECKPOINT_DIR, public_key()) if c.seq >= last_seq),
        key=lambda c: c.seq,
    )


def build_evidence(request_id: int, *, actor: Actor) -> tuple[str, bytes]:
    """(file name, zip bytes) of the evidence bundle of one request. Raises AuditError.

    The export is itself audited (EVIDENCE_EXPORTED, the request id in its
    detail only, so it is not one of the request's own events).
    """
    private = signing_key()
    if private is None:
        raise AuditError("evidence bundles are signed: set OPS_AUDIT_SIGNING_KEY_FILE")
    try:
        request = RollbackRequest.objects.select_related("target", "snapshot").get(pk=request_id)
    except RollbackRequest.DoesNotExist:
        raise AuditError(f"there is no rollback request #{request_id}") from None
    seqs = list(AuditEvent.objects.filter(request_id=request.pk).order_by("seq").values_list("seq", flat=True))
    if not seqs:
        raise AuditError(f"rollback request #{request_id} has no audit events")
    checkpoint = _covering_checkpoint(seqs[-1], actor)
    events = _segment(seqs[0], checkpoint.seq)
    if not events or events[-1]["seq"] != checkpoint.seq or events[-1]["hash"] != checkpoint.hash:
        raise AuditError(
            f"the audit log no longer holds the event {checkpoint.label} signed: run verify_audit_log (no bundle made)"
        )
    made = datetime.now(UTC).isoformat(timespec="seconds")
    members = {
        "request.json": json.dumps(request_facts(request), indent=1, ensure_ascii=False).encode(),
        "rehearsals.json": json.dumps(rehearsal_facts(request), indent=1, ensure_ascii=False).encode(),
        "events.jsonl": "".join(canonical_encoder(e) + "\n" for e in events).encode(),
        "checkpoint.json": json.dumps(read_checkpoint_document(checkpoint.path), sort_keys=True, indent=1).encode(),
        "public_key.pem": public_key_pem(private.public_key()),
        "README.txt": README.format(
            request_id=request.pk,
            target=request.target.name,
            made=made,
            actor=actor.username,
            first=seqs[0],
            last=checkpoint.seq,
            count=len(seqs),
        ).encode(),
    }
    manifest = canonical_encoder(
        {
            "format": BUNDLE_FORMAT,
            "request_id": request.pk,
            "made": made,
            "event_seqs": seqs,
            "checkpoint_seq": checkpoint.seq,
            "members": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
        }
    ).encode()
    members["MANIFEST.json"] = manifest
    members["MANIFEST.sig"] = private.sign(manifest).hex().encode() + b"\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    append_event(
        action=AuditAction.EVIDENCE_EXPORTED,
        outcome=AuditOutcome.INFO,
        actor=actor,
        message=f"evidence bundle of rollback request #{request.pk} exported (events #{seqs[0]}..#{checkpoint.seq})",
        target=request.target.name,
        detail={
            "request": request.pk,
            "checkpoint_seq": checkpoint.seq,
            "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        },
    )
    return f"evidence-request-{request.pk}.zip", buffer.getvalue()
