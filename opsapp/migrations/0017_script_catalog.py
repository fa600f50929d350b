"""One catalog per script directory: move per-target Revision rows to per-directory ScriptCatalog rows.

Forward: the rows of each target are fingerprinted (the same digest as
`catalog.store.facts_fingerprint`); targets with the same facts share one
catalog. The first target's rows are re-pointed at it (no copy); the other
targets' identical rows are deleted. `applied`/`is_current` are dropped:
they are derived from `Target.current_heads`, which every synced target
keeps. Backward: every target gets its own copy of its catalog's rows again,
with `applied`/`is_current` recomputed from its heads.
"""

from __future__ import annotations

import hashlib
import json

import django.db.models.deletion
from django.db import migrations, models

# A copy of catalog.load.ROW_FIELDS as of this migration (a migration must not follow later code).
ROW_FIELDS = (
    "down_revisions",
    "branch_labels",
    "branch_labels_text",
    "depends_on",
    "message",
    "docstring",
    "create_date",
    "path",
    "position",
    "is_head",
    "is_base",
    "is_branch_point",
    "is_merge_point",
)
BATCH = 1000


def facts_fingerprint(rows: dict, heads: list) -> str:
    """catalog.store.facts_fingerprint as of this migration."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(heads)).encode())
    for rev in sorted(rows):
        facts = {name: rows[rev][name] for name in ROW_FIELDS}
        digest.update(b"\n" + json.dumps([rev, facts], sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _immediate(schema_editor) -> None:
    # Check the deferred foreign keys now: PostgreSQL refuses the ALTER TABLEs that
    # follow in this transaction while trigger events are pending.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def to_catalogs(apps, schema_editor) -> None:
    Target = apps.get_model("opsapp", "Target")
    Revision = apps.get_model("opsapp", "Revision")
    ScriptCatalog = apps.get_model("opsapp", "ScriptCatalog")
    by_fingerprint: dict[str, int] = {}
    for target in Target.objects.order_by("pk"):
        rows = {
            values.pop("revision"): values
            for values in Revision.objects.filter(target_id=target.pk).values("revision", *ROW_FIELDS)
        }
        if not rows:
            continue
        fingerprint = facts_fingerprint(rows, list(target.script_heads or []))
        catalog_id = by_fingerprint.get(fingerprint)
        if catalog_id is None:
            catalog = ScriptCatalog.objects.create(
                fingerprint=fingerprint, heads=list(target.script_heads or []), revision_count=len(rows)
            )
            catalog_id = by_fingerprint[fingerprint] = catalog.pk
            Revision.objects.filter(target_id=target.pk).update(catalog_id=catalog_id, target_id=None)
        else:
            Revision.objects.filter(target_id=target.pk).delete()
        Target.objects.filter(pk=target.pk).update(catalog_id=catalog_id)
    _immediate(schema_editor)


def _applied(rows: dict, heads: list) -> set:
    """The heads and their ancestors (down revisions and depends_on, a label naming its revision)."""
    names = {rev: rev for rev in rows}
    for rev, row in rows.items():
        for label in row["branch_labels"]:
            names.setdefault(label, rev)
    seen: set = set()
    todo = [rev for rev in heads if rev in rows]
    while todo:
        rev = todo.pop()
        if rev in seen:
            continue
        seen.add(rev)
        row = rows[rev]
        todo.extend(list(row["down_revisions"]) + [names[d] for d in row["depends_on"] if d in names])
    return seen


def to_targets(apps, schema_editor) -> None:
    Target = apps.get_model("opsapp", "Target")
    Revision = apps.get_model("opsapp", "Revision")
    for target in Target.objects.exclude(catalog_id=None).order_by("pk"):
        rows = {
            values.pop("revision"): values
            for values in Revision.objects.filter(catalog_id=target.catalog_id, target_id=None).values(
                "revision", *ROW_FIELDS
            )
        }
        heads = list(target.current_heads or [])
        applied = _applied(rows, heads)
        Revision.objects.bulk_create(
            [
                Revision(
                    target_id=target.pk,
                    catalog_id=None,
                    revision=rev,
                    applied=rev in applied,
                    is_current=rev in heads,
                    **row,
                )
                for rev, row in rows.items()
            ],
            batch_size=BATCH,
        )
    # The per-directory rows (and catalogs no target used) are gone once every target has its copy.
    Revision.objects.filter(target_id=None).delete()
    _immediate(schema_editor)


class Migration(migrations.Migration):
    dependencies = [
        ("opsapp", "0016_audit_search_trigram"),
    ]

    operations = [
        migrations.CreateModel(
            name="ScriptCatalog",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("fingerprint", models.CharField(editable=False, max_length=64, unique=True)),
                ("directory", models.CharField(blank=True, editable=False, max_length=1000)),
                ("heads", models.JSONField(default=list, editable=False)),
                ("revision_count", models.IntegerField(default=0, editable=False)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["id"]},
        ),
        migrations.AddField(
            model_name="target",
            name="catalog",
            field=models.ForeignKey(
                blank=True,
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="targets",
                to="opsapp.scriptcatalog",
            ),
        ),
        migrations.AddField(
            model_name="revision",
            name="catalog",
            field=models.ForeignKey(
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="revisions",
                to="opsapp.scriptcatalog",
            ),
        ),
        migrations.AlterField(
            model_name="revision",
            name="target",
            field=models.ForeignKey(
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="revisions",
                to="opsapp.target",
            ),
        ),
        migrations.RemoveConstraint(model_name="revision", name="uniq_revision_per_target"),
        migrations.RunPython(to_catalogs, to_targets),
        migrations.RemoveIndex(model_name="revision", name="revision_target_pos_id"),
        migrations.RemoveField(model_name="revision", name="target"),
        migrations.RemoveField(model_name="revision", name="applied"),
        migrations.RemoveField(model_name="revision", name="is_current"),
        migrations.AlterField(
            model_name="revision",
            name="catalog",
            field=models.ForeignKey(
                editable=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="revisions",
                to="opsapp.scriptcatalog",
            ),
        ),
        migrations.AlterModelOptions(name="revision", options={"ordering": ["catalog", "-position"]}),
        migrations.AddConstraint(
            model_name="revision",
            constraint=models.UniqueConstraint(fields=("catalog", "revision"), name="uniq_revision_per_catalog"),
        ),
        migrations.AddIndex(
            model_name="revision",
            index=models.Index(fields=["catalog", "-position", "-id"], name="revision_catalog_pos_id"),
        ),
    ]
