"""The keyed audit chain (issue 12): key_id and mac columns, two new actions, and on SQLite
a BEFORE INSERT trigger that refuses `INSERT OR REPLACE` / `REPLACE INTO` over an existing
event (REPLACE deletes the old row without firing the DELETE trigger).

Existing events are not touched: they keep key_id '' and their plain SHA-256 hash, and stay
verifiable as they are. The first event written with a key is preceded by an "audit key
changed" event (opsapp.services.audit.log), whose hash covers the old chain's head.

On SQLite, adding a column with a default rebuilds the table, which drops its triggers:
the 0003 triggers are installed again here.
"""

from django.db import migrations, models

TABLE = "opsapp_auditevent"
MESSAGE = "opsapp_auditevent is append-only"
SQLITE_INSTALL = [
    f"""CREATE TRIGGER IF NOT EXISTS opsapp_auditevent_no_update BEFORE UPDATE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}: UPDATE is not allowed'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS opsapp_auditevent_no_delete BEFORE DELETE ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}: DELETE is not allowed'); END""",
    f"""CREATE TRIGGER opsapp_auditevent_no_replace BEFORE INSERT ON {TABLE}
        WHEN EXISTS (SELECT 1 FROM {TABLE} WHERE seq = NEW.seq OR id = NEW.id)
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}: REPLACE of an existing event is not allowed'); END""",
]
SQLITE_REMOVE = ["DROP TRIGGER IF EXISTS opsapp_auditevent_no_replace"]


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for sql in SQLITE_INSTALL:
            schema_editor.execute(sql, params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for sql in SQLITE_REMOVE:
            schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("opsapp", "0009_rehearsal"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="key_id",
            field=models.CharField(blank=True, default="", editable=False, max_length=40),
        ),
        migrations.AddField(
            model_name="auditevent",
            name="mac",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="action",
            field=models.CharField(
                choices=[
                    ("rollback_requested", "rollback requested"),
                    ("code_issued", "code issued"),
                    ("code_rejected", "code rejected"),
                    ("request_locked", "request locked out"),
                    ("request_cancelled", "request cancelled"),
                    ("snapshot_taken", "snapshot taken"),
                    ("snapshot_verified", "snapshot verified"),
                    ("snapshot_failed", "snapshot failed"),
                    ("snapshot_pruned", "snapshot pruned"),
                    ("snapshot_restored", "snapshot restored"),
                    ("snapshot_attached", "snapshot attached"),
                    ("rollback_refused", "rollback refused"),
                    ("rollback_started", "rollback started"),
                    ("rollback_retried", "rollback retried"),
                    ("rollback_succeeded", "rollback succeeded"),
                    ("rollback_failed", "rollback failed"),
                    ("rollback_interrupted", "rollback interrupted"),
                    ("stamp", "stamp"),
                    ("heads_changed", "heads changed"),
                    ("audit_verified", "audit log verified"),
                    ("audit_exported", "audit log exported"),
                    ("audit_key_changed", "audit key changed"),
                    ("evidence_exported", "evidence exported"),
                    ("otp_enrolled", "2FA device enrolled"),
                    ("otp_reset", "2FA devices reset"),
                    ("otp_token_rejected", "2FA token rejected"),
                    ("otp_backup_code_used", "2FA backup code used"),
                    ("otp_rekeyed", "2FA secrets re-encrypted"),
                    ("rehearsal_started", "rehearsal started"),
                    ("rehearsal_succeeded", "rehearsal succeeded"),
                    ("rehearsal_failed", "rehearsal failed"),
                    ("rehearsal_interrupted", "rehearsal interrupted"),
                ],
                editable=False,
                max_length=40,
            ),
        ),
        migrations.RunPython(install, remove),
    ]
