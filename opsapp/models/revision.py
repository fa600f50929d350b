from __future__ import annotations

from django.db import models


class ScriptCatalog(models.Model):
    """The revisions of one script directory, stored once and shared by every target that reads it.

    Identified by `fingerprint`, a sha256 over the revision facts (ids, parents,
    labels, messages, relative paths, graph flags). A directory that changes
    updates its catalog in place (rows keep their ids) when only its own
    targets read it; a catalog no target points at is deleted. Where a database stands
    (applied, current) is per target and derived from its own heads
    (`Target.current_heads`), never stored per revision.
    """

    fingerprint = models.CharField(max_length=64, unique=True, editable=False)
    # The script directory it was first read from (shown on pages; the facts hold relative paths).
    directory = models.CharField(max_length=1000, blank=True, editable=False)
    heads = models.JSONField(default=list, editable=False)
    revision_count = models.IntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, editable=False)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.directory or 'script directory'} ({self.fingerprint[:12]})"


class Revision(models.Model):
    """One revision of a script directory's catalog, synced by the catalog service."""

    catalog = models.ForeignKey(ScriptCatalog, on_delete=models.CASCADE, related_name="revisions", editable=False)
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

    class Meta:
        ordering = ["catalog", "-position"]
        constraints = [models.UniqueConstraint(fields=["catalog", "revision"], name="uniq_revision_per_catalog")]
        indexes = [
            # the changelist's ordering (RevisionAdmin.ordering: catalog_id, -position, -id),
            # filtered by target (= its catalog) or not; also filter(catalog=...).order_by("-position")
            models.Index(fields=["catalog", "-position", "-id"], name="revision_catalog_pos_id"),
            # id-prefix search (LIKE 'abc%')
            models.Index(fields=["revision"], name="revision_id"),
        ]

    def __str__(self) -> str:
        return self.revision

    @property
    def short(self) -> str:
        return self.revision[:12]
