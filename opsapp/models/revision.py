from __future__ import annotations

from django.db import models


class Revision(models.Model):
    """One revision of a target's script directory, synced by the catalog service."""

    target = models.ForeignKey("opsapp.Target", on_delete=models.CASCADE, related_name="revisions", editable=False)
    revision = models.CharField(max_length=255, editable=False)
    down_revisions = models.JSONField(default=list, editable=False)
    branch_labels = models.JSONField(default=list, editable=False)
    # Space-joined labels so the changelist can filter and search them cheaply.
    branch_labels_text = models.CharField(max_length=500, blank=True, editable=False)
    depends_on = models.JSONField(default=list, editable=False)
    message = models.TextField(blank=True, editable=False)
    docstring = models.TextField(blank=True, editable=False)
    create_date = models.CharField(max_length=64, blank=True, editable=False)
    path = models.CharField(max_length=1000, blank=True, editable=False)
    # Topological position (bases first); the graph and default ordering use it.
    position = models.IntegerField(default=0, editable=False)
    is_head = models.BooleanField(default=False, editable=False)
    is_base = models.BooleanField(default=False, editable=False)
    is_branch_point = models.BooleanField(default=False, editable=False)
    is_merge_point = models.BooleanField(default=False, editable=False)
    applied = models.BooleanField(default=False, editable=False)
    is_current = models.BooleanField(default=False, editable=False)

    class Meta:
        ordering = ["target", "-position"]
        constraints = [models.UniqueConstraint(fields=["target", "revision"], name="uniq_revision_per_target")]
        indexes = [
            # the changelist's ordering (RevisionAdmin.ordering: target_id, -position, -id),
            # filtered by target or not; also filter(target=...).order_by("-position")
            models.Index(fields=["target", "-position", "-id"], name="revision_target_pos_id"),
            # id-prefix search (LIKE 'abc%')
            models.Index(fields=["revision"], name="revision_id"),
        ]

    def __str__(self) -> str:
        return f"{self.target.name}:{self.revision}" if self.target_id else self.revision

    @property
    def short(self) -> str:
        return self.revision[:12]
