from __future__ import annotations

from django.conf import settings
from django.db import models


class RollbackStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"
    EXPIRED = "expired", "expired"
    LOCKED = "locked", "locked out"
    INTERRUPTED = "interrupted", "interrupted"


OPEN_STATUSES = (RollbackStatus.PENDING, RollbackStatus.RUNNING)


class RollbackRequest(models.Model):
    """One planned downgrade and everything the gate checks it against."""

    target = models.ForeignKey(
        "opsapp.Target", on_delete=models.PROTECT, related_name="rollback_requests", editable=False
    )
    status = models.CharField(
        max_length=20, choices=RollbackStatus.choices, default=RollbackStatus.PENDING, editable=False
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    requested_by_username = models.CharField(max_length=150, blank=True, editable=False)
    reason = models.TextField()
    to_revision_input = models.CharField("target revision as given", max_length=255, editable=False)
    to_revision = models.CharField("resolved target revision", max_length=255, editable=False)
    from_heads = models.JSONField(default=list, editable=False)
    steps = models.JSONField("revisions to revert, in order", default=list, editable=False)
    sql_preview = models.TextField(blank=True, editable=False)
    sql_sha256 = models.CharField(max_length=64, blank=True, editable=False)
    # Gate "plan" compares these, not sql_sha256: the preview text's version-table
    # bookkeeping varies with Python's hash seed (services/rollback/fingerprint.py).
    plan_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    step_digests = models.JSONField(default=list, editable=False)
    destructive = models.JSONField(default=list, editable=False)
    non_transactional = models.JSONField("reasons it cannot run in one transaction", default=list, editable=False)
    script_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    plan_hash = models.CharField(max_length=64, blank=True, editable=False)
    snapshot = models.ForeignKey(
        "opsapp.Snapshot",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="rollback_requests",
        editable=False,
    )
    # Verification code: only a hash, bound to this request and its plan hash.
    code_hash = models.CharField(max_length=128, blank=True, editable=False)
    code_issued_at = models.DateTimeField(null=True, blank=True, editable=False)
    code_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    code_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    code_attempts = models.IntegerField(default=0, editable=False)
    code_recipients = models.JSONField(default=list, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, editable=False)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    executed_by_username = models.CharField(max_length=150, blank=True, editable=False)
    duration_ms = models.IntegerField(null=True, blank=True, editable=False)
    attempts = models.IntegerField(default=0, editable=False)
    final_heads = models.JSONField(null=True, blank=True, editable=False)
    reverted = models.JSONField(default=list, editable=False)
    error = models.TextField(blank=True, editable=False)
    sqlstate = models.CharField(max_length=5, blank=True, editable=False)
    # Which step of a failed downgrade failed, and on which statement ("" when not known or not in a step).
    failed_revision = models.CharField(max_length=255, blank=True, editable=False)
    failed_statement = models.TextField(blank=True, editable=False)
    last_refusal_gate = models.CharField(max_length=40, blank=True, editable=False)
    last_refusal_message = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("approve_rollbackrequest", "Can receive verification codes (approver)"),
            ("execute_rollbackrequest", "Can execute a rollback with a code"),
        ]
        indexes = [
            # open requests per target (prune, dashboard, reconcile)
            models.Index(fields=["target", "status"], name="rollback_target_status"),
        ]

    def __str__(self) -> str:
        return f"rollback #{self.pk} of {self.target.name if self.target_id else '?'} to {self.to_revision[:12]}"
