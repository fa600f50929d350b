from __future__ import annotations

from django.db import models


class RehearsalStatus(models.TextChoices):
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    INTERRUPTED = "interrupted", "interrupted"


class Rehearsal(models.Model):
    """One run of a request's stored plan on a scratch copy restored from its snapshot.

    Everything is measured on the copy (services/rehearsal): row counts,
    dropped values, durations, the schema after. Gate "rehearsal" accepts a
    request only when its latest rehearsal on the same snapshot and plan
    fingerprint succeeded.
    """

    request = models.ForeignKey(
        "opsapp.RollbackRequest", on_delete=models.CASCADE, related_name="rehearsals", editable=False
    )
    snapshot = models.ForeignKey("opsapp.Snapshot", on_delete=models.PROTECT, related_name="+", editable=False)
    status = models.CharField(
        max_length=20, choices=RehearsalStatus.choices, default=RehearsalStatus.RUNNING, editable=False
    )
    started_by = models.CharField(max_length=150, blank=True, editable=False)
    started_at = models.DateTimeField(auto_now_add=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    plan_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    script_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    isolation_level = models.CharField(max_length=40, blank=True, editable=False)
    # Where the copy lived: "OPS_REHEARSAL_URL", "target server" or "file copy"; never a URL.
    server = models.CharField(max_length=40, blank=True, editable=False)
    scratch_name = models.CharField(max_length=63, blank=True, editable=False)
    round_trip = models.BooleanField(default=False, editable=False)
    restore_ms = models.IntegerField(null=True, blank=True, editable=False)
    downgrade_ms = models.IntegerField(null=True, blank=True, editable=False)
    duration_ms = models.IntegerField(null=True, blank=True, editable=False)
    # [{"revisions": [...], "ms": 12}] in the order the downgrade ran them.
    steps = models.JSONField(default=list, editable=False)
    failed_revision = models.CharField(max_length=255, blank=True, editable=False)
    failed_statement = models.TextField(blank=True, editable=False)
    sqlstate = models.CharField(max_length=5, blank=True, editable=False)
    error = models.TextField(blank=True, editable=False)
    rows_before = models.JSONField(default=dict, editable=False)
    rows_after = models.JSONField(default=dict, editable=False)
    # {"rows": {table: n}, "values": {"table.column": n}, "tables": [...], "columns": [...]}
    destroyed = models.JSONField(default=dict, editable=False)
    schema_after = models.JSONField(default=dict, editable=False)
    # {"ok": bool, "migrations": [...], "tables": {...}, "values": {...}, "schema_diff": "..."}
    round_trip_report = models.JSONField(default=dict, editable=False)
    progress = models.CharField(max_length=200, blank=True, editable=False)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [
            # gate "rehearsal": the latest rehearsal of a request
            models.Index(fields=["request", "-started_at"], name="rehearsal_request_started"),
        ]

    def __str__(self) -> str:
        return f"rehearsal #{self.pk} of request #{self.request_id} ({self.status})"
