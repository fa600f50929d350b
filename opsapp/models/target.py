from __future__ import annotations

from django.db import models


class TargetState(models.TextChoices):
    AT_HEAD = "at_head", "at head"
    BEHIND = "behind", "behind"
    UNKNOWN_REVISION = "unknown_revision", "unknown revision"
    # alembic_version holds a revision together with one of its own ancestors.
    OVERLAPPING_VERSIONS = "overlapping_versions", "overlapping alembic_version rows"
    MULTIPLE_HEADS = "multiple_heads", "multiple heads in scripts"
    EMPTY = "empty", "empty"
    UNREACHABLE = "unreachable", "unreachable"
    SCRIPT_ERROR = "script_error", "script directory error"
    NOT_SYNCED = "not_synced", "not synced yet"


class Target(models.Model):
    """Mirror of one configured target. The URL is stored masked only."""

    name = models.SlugField(max_length=100, unique=True, editable=False)
    url_masked = models.CharField("URL (password masked)", max_length=1000, blank=True, editable=False)
    dialect = models.CharField(max_length=30, blank=True, editable=False)
    alembic_ini = models.CharField(max_length=1000, blank=True, editable=False)
    # From OPS_TARGETS_FILE (e.g. {"region": "eu", "tier": "prod"}); the fleet matrix filters on them.
    tags = models.JSONField(default=dict, blank=True, editable=False)
    # Names, sizes and mtimes of the script files: tells a sync whether to re-read the directory.
    script_fingerprint = models.CharField(max_length=64, blank=True, editable=False)
    # The revisions of its script directory, shared with every target reading the same one.
    catalog = models.ForeignKey(
        "opsapp.ScriptCatalog",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="targets",
        editable=False,
    )
    script_heads = models.JSONField(default=list, editable=False)
    current_heads = models.JSONField(default=list, editable=False)
    # Heads the console last saw in alembic_version: a difference is a
    # "heads changed" audit event (the history Alembic does not keep).
    last_seen_heads = models.JSONField(null=True, blank=True, editable=False)
    state = models.CharField(max_length=30, choices=TargetState.choices, default=TargetState.NOT_SYNCED, editable=False)
    state_detail = models.TextField(blank=True, editable=False)
    pending_count = models.IntegerField(default=0, editable=False)
    revision_count = models.IntegerField(default=0, editable=False)
    sync_errors = models.JSONField(default=list, blank=True, editable=False)
    last_synced_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        permissions = [("take_snapshot", "Can take a snapshot of a target")]

    def __str__(self) -> str:
        return self.name
