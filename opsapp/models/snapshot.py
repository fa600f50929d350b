from __future__ import annotations

from django.conf import settings
from django.db import models


class SnapshotStatus(models.TextChoices):
    RUNNING = "running", "running"
    COMPLETE = "complete", "complete"
    VERIFIED = "verified", "verified"
    FAILED = "failed", "failed"
    PRUNED = "pruned", "pruned"


class Snapshot(models.Model):
    """A full backup of a target: pg_dump custom format, or SQLite's backup API."""

    target = models.ForeignKey("opsapp.Target", on_delete=models.PROTECT, related_name="snapshots", editable=False)
    status = models.CharField(
        max_length=20, choices=SnapshotStatus.choices, default=SnapshotStatus.RUNNING, editable=False
    )
    format = models.CharField(max_length=20, blank=True, editable=False)  # "pg_custom" | "sqlite"
    taken_by = models.CharField(max_length=150, blank=True, editable=False)
    taken_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    started_at = models.DateTimeField(auto_now_add=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Relative to OPS_SNAPSHOT_DIR.
    path = models.CharField(max_length=1000, blank=True, editable=False)
    size = models.BigIntegerField(null=True, blank=True, editable=False)
    # pg_database_size (or the SQLite file's size) when the dump began: with `size`, how much the
    # archive compresses, so the next dump's final size can be estimated (operations' ETA).
    database_size = models.BigIntegerField(null=True, blank=True, editable=False)
    sha256 = models.CharField(max_length=64, blank=True, editable=False)
    dump_tool_version = models.CharField(max_length=200, blank=True, editable=False)
    server_version = models.CharField(max_length=200, blank=True, editable=False)
    heads = models.JSONField(default=list, editable=False)
    error = models.TextField(blank=True, editable=False)
    verified_at = models.DateTimeField(null=True, blank=True, editable=False)
    pruned_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-started_at", "-id"]
        permissions = [("restore_snapshot", "Can restore a snapshot into a restore destination")]
        indexes = [
            # latest verified snapshot per target (gate, dashboard, prune)
            models.Index(fields=["target", "status", "-started_at"], name="snapshot_target_status"),
        ]

    def __str__(self) -> str:
        return f"snapshot #{self.pk} of {self.target.name if self.target_id else '?'} ({self.status})"
