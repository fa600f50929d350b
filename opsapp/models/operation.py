from __future__ import annotations

from django.conf import settings
from django.db import models


class OperationKind(models.TextChoices):
    SYNC = "sync", "sync"
    SNAPSHOT = "snapshot", "snapshot"
    DOWNGRADE = "downgrade", "downgrade"
    REHEARSAL = "rehearsal", "rehearsal"
    RESTORE = "restore", "restore"


class OperationState(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"
    INTERRUPTED = "interrupted", "interrupted"


ACTIVE_STATES = (OperationState.QUEUED, OperationState.RUNNING)
# A running rehearsal touches only its scratch copy: it is not stopped half-way. (A running sync stops at
# its next safe point, before it writes; a running restore's pg_restore is killed and rolls back.)
UNCANCELLABLE_WHILE_RUNNING = (OperationKind.REHEARSAL,)


class Operation(models.Model):
    """One long operation run as a durable job (opsapp.services.operations).

    The queue itself (django-tasks-db's table) holds only this row's id; who
    asked, what for, progress and result live here. No secret is ever stored.
    """

    kind = models.CharField(max_length=20, choices=OperationKind.choices, editable=False)
    state = models.CharField(
        max_length=20, choices=OperationState.choices, default=OperationState.QUEUED, editable=False
    )
    target = models.ForeignKey("opsapp.Target", on_delete=models.PROTECT, related_name="operations", editable=False)
    request = models.ForeignKey(
        "opsapp.RollbackRequest",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="operations",
        editable=False,
    )
    snapshot = models.ForeignKey(
        "opsapp.Snapshot", null=True, blank=True, on_delete=models.PROTECT, related_name="operations", editable=False
    )
    # The attempt this one retries (a snapshot whose worker died).
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries", editable=False
    )
    attempt = models.IntegerField(default=1, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    requested_by_username = models.CharField(max_length=150, blank=True, editable=False)
    client_ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    task_id = models.CharField("queue task id", max_length=64, blank=True, editable=False)
    worker_host = models.CharField(max_length=255, blank=True, editable=False)
    worker_pid = models.IntegerField(null=True, blank=True, editable=False)
    queued_at = models.DateTimeField(auto_now_add=True, editable=False)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)
    # What the operation was asked to do beyond its kind and request: a rehearsal's {"round_trip": true}, a
    # restore's {"destination": NAME} (a name from OPS_RESTORE_DESTINATIONS, never its URL). Never a secret.
    params = models.JSONField(default=dict, blank=True, editable=False)
    # Progress: bytes written of the database's size (snapshot), steps done of total (downgrade; rehearsal:
    # the restore, then each step).
    progress_done = models.BigIntegerField(null=True, blank=True, editable=False)
    progress_total = models.BigIntegerField(null=True, blank=True, editable=False)
    progress_unit = models.CharField(max_length=10, blank=True, editable=False)  # "bytes" | "steps"
    progress_label = models.CharField(max_length=500, blank=True, editable=False)
    # When the counted work began (the dump's start, not the wait for the target's lock): the ETA's clock.
    progress_since = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when progress_total is an estimate (a dump's final size): what it was estimated from.
    progress_estimate = models.CharField(max_length=300, blank=True, editable=False)
    cancel_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    cancel_requested_by = models.CharField(max_length=150, blank=True, editable=False)
    result = models.JSONField(null=True, blank=True, editable=False)
    error = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["-queued_at", "-id"]
        permissions = [("cancel_operation", "Can cancel a queued or running operation")]
        indexes = [
            # active operations per target (dashboard, "one operation per target", reconcile)
            models.Index(fields=["target", "state"], name="operation_target_state"),
            # the changelist's default order and the dashboard's running/queued lists
            models.Index(fields=["state", "-queued_at"], name="operation_state_queued"),
        ]

    def __str__(self) -> str:
        return f"operation #{self.pk} ({self.kind} of {self.target.name if self.target_id else '?'}, {self.state})"

    @property
    def percent(self) -> int | None:
        if not self.progress_total or self.progress_done is None:
            return None
        return max(0, min(100, int(self.progress_done * 100 / self.progress_total)))
