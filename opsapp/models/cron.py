"""CronRun: one run of a cron command, so a job that stopped running is noticed."""

from __future__ import annotations

from django.db import models


class CronRun(models.Model):
    """Written when a cron command starts, completed when it ends (opsapp.management.cron).

    A run with no `finished_at` is still running, or its process died.
    """

    command = models.CharField(max_length=100, editable=False)
    started_at = models.DateTimeField(editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    # 0 ok, 1 found a problem / refused / crashed, 2 bad usage: the command's own exit code.
    exit_status = models.IntegerField(null=True, blank=True, editable=False)
    duration_seconds = models.FloatField(null=True, blank=True, editable=False)
    host = models.CharField(max_length=255, blank=True, editable=False)
    pid = models.IntegerField(null=True, blank=True, editable=False)
    # The error's first line for a failed run (CommandError text or exception), masked.
    detail = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            # cron_status(): the latest run (and latest finished run) of each command.
            models.Index(fields=["command", "-started_at"], name="opsapp_cronrun_cmd_started"),
        ]

    def __str__(self) -> str:
        return f"{self.command} at {self.started_at:%Y-%m-%d %H:%M:%S}"
