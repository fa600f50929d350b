"""Snapshots (issue 5): real pg_dump / pg_restore on throwaway databases, real SQLite backups."""

from __future__ import annotations

import os
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from opsapp.models import AuditAction, AuditEvent, AuditOutcome, RollbackRequest, Snapshot, SnapshotStatus
from opsapp.services.actors import Actor
from opsapp.services.errors import SnapshotError, TargetNotConfigured
from opsapp.services.snapshots.lifecycle import (
    latest_verified_snapshot,
    prune_snapshots,
    snapshot_file_problem,
    snapshot_path,
    take_snapshot,
    verify_snapshot,
)
from opsapp.services.snapshots.postgres import check_tool_not_older
from opsapp.services.snapshots.restore import restore_snapshot
from tests.conftest import pg_query
from tests.operations_support import run_queued_jobs

pytestmark = pytest.mark.django_db
ACTOR = Actor.cli("tester")


def fill_pg(url: str, rows: int = 25) -> None:
    """A small real schema: a data table plus alembic_version at two heads."""
    pg_query(url, "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price integer)")
    pg_query(url, "INSERT INTO items (name, price) SELECT 'item ' || g, g * 10 FROM generate_series(1, %s) g", (rows,))
    pg_query(url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    pg_query(url, "INSERT INTO alembic_version VALUES ('h8'), ('x1')")


@pytest.fixture
def pg_target(pg_url, configure_target, branchy_scripts) -> tuple[str, str]:
    fill_pg(pg_url)
    return configure_target("snapt", pg_url, branchy_scripts.ini), pg_url


def fill_sqlite(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);"
        "INSERT INTO items (name) VALUES ('a'), ('b'), ('c');"
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);"
        "INSERT INTO alembic_version VALUES ('d4');"
    )
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


@pytest.fixture
def sqlite_target(tmp_path, configure_target, branchy_scripts) -> tuple[str, Path]:
    path = tmp_path / "lite.sqlite3"
    return configure_target("lite", fill_sqlite(path), branchy_scripts.ini), path


def events(action: str, **filters) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("seq"))


def columns(url: str, table: str) -> list[tuple]:
    return pg_query(
        url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
        (table,),
    )


def no_partial_files(directory: Path) -> bool:
    return not directory.exists() or not any(p.name.endswith(".partial") for p in directory.iterdir())


def flip_one_byte(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ postgres
def test_take_verify_restore_reproduces_schema_heads_and_row_counts(pg_target, pg_database_factory, settings):
    name, url = pg_target
    seen: list[int] = []
    snap = take_snapshot(name, actor=ACTOR, progress=seen.append)

    assert snap.status == SnapshotStatus.VERIFIED and snap.verified_at is not None
    assert snap.heads == ["h8", "x1"] and snap.format == "pg_custom" and snap.taken_by == "cli:tester"
    assert snap.dump_tool_version.startswith("pg_dump (PostgreSQL)") and snap.server_version
    path = snapshot_path(snap)
    assert path.parent == Path(settings.OPS_SNAPSHOT_DIR) and path.stat().st_size == snap.size
    assert seen and seen[-1] == snap.size
    assert snapshot_file_problem(snap) is None and latest_verified_snapshot(snap.target) == snap
    assert [e.outcome for e in events(AuditAction.SNAPSHOT_TAKEN, snapshot_id=snap.pk)] == ["success"]
    assert [e.outcome for e in events(AuditAction.SNAPSHOT_VERIFIED, snapshot_id=snap.pk)] == ["success"]

    new_url = pg_database_factory()
    result = restore_snapshot(snap.pk, new_url, actor=ACTOR)
    assert result["heads"] == ["h8", "x1"]
    assert result["row_counts"] == {"alembic_version": 2, "items": 25}
    assert columns(new_url, "items") == columns(url, "items")
    assert pg_query(new_url, "SELECT sum(price) FROM items") == pg_query(url, "SELECT sum(price) FROM items")
    restored = events(AuditAction.SNAPSHOT_RESTORED, snapshot_id=snap.pk)
    assert [e.outcome for e in restored] == ["success"] and restored[0].detail["row_counts"]["items"] == 25


def test_heads_moved_during_a_postgresql_dump_do_not_leak_into_the_archive(pg_target, pg_database_factory):
    """The dump uses the snapshot exported where the heads were read, so both always agree."""
    name, url = pg_target
    moved: list[bool] = []

    def migrate_meanwhile(_size: int) -> None:
        if not moved:
            pg_query(url, "UPDATE alembic_version SET version_num = 'g7' WHERE version_num = 'h8'")
            moved.append(True)

    snap = take_snapshot(name, actor=ACTOR, progress=migrate_meanwhile)
    assert moved and snap.heads == ["h8", "x1"] and snap.status == SnapshotStatus.VERIFIED
    assert restore_snapshot(snap.pk, pg_database_factory(), actor=ACTOR)["heads"] == ["h8", "x1"]


def test_flipping_one_byte_makes_verification_fail(pg_target):
    snap = take_snapshot(pg_target[0], actor=ACTOR)
    flip_one_byte(snapshot_path(snap))

    assert "was altered: checksum mismatch" in snapshot_file_problem(snap)
    snap = verify_snapshot(snap, actor=ACTOR)
    assert snap.status == SnapshotStatus.FAILED and "checksum mismatch" in snap.error
    failed = events(AuditAction.SNAPSHOT_FAILED, snapshot_id=snap.pk)
    assert len(failed) == 1 and failed[0].outcome == AuditOutcome.FAILURE and failed[0].detail["phase"] == "verify"
    assert latest_verified_snapshot(snap.target) is None


def test_a_deleted_file_fails_verification_and_cannot_be_restored(pg_target, pg_database_factory):
    snap = take_snapshot(pg_target[0], actor=ACTOR)
    snapshot_path(snap).unlink()

    snap = verify_snapshot(snap, actor=ACTOR)
    assert snap.status == SnapshotStatus.FAILED and "is missing (deleted outside the console)" in snap.error
    assert events(AuditAction.SNAPSHOT_FAILED, snapshot_id=snap.pk)[0].message == snap.error
    with pytest.raises(SnapshotError, match="only a complete or verified snapshot can be restored"):
        restore_snapshot(snap.pk, pg_database_factory(), actor=ACTOR)


def test_it_refuses_to_restore_into_a_database_that_has_tables(pg_target, pg_database_factory):
    snap = take_snapshot(pg_target[0], actor=ACTOR)
    busy = pg_database_factory()
    pg_query(busy, "CREATE TABLE keep_me (id int)")
    pg_query(busy, "INSERT INTO keep_me VALUES (1)")

    with pytest.raises(SnapshotError, match=r"it is not empty \(1 relation\(s\): public.keep_me\)"):
        restore_snapshot(snap.pk, busy, actor=ACTOR)
    assert pg_query(busy, "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace") == [("keep_me",)]
    refused = events(AuditAction.SNAPSHOT_RESTORED, snapshot_id=snap.pk)
    assert [e.outcome for e in refused] == ["refused"]
    assert Snapshot.objects.get(pk=snap.pk).status == SnapshotStatus.VERIFIED


def test_it_refuses_to_restore_over_a_configured_target(pg_target):
    name, url = pg_target
    snap = take_snapshot(name, actor=ACTOR)
    with pytest.raises(SnapshotError, match="it is the database of target 'snapt'. In-place restore is not offered"):
        restore_snapshot(snap.pk, url, actor=ACTOR)
    assert pg_query(url, "SELECT count(*) FROM items") == [(25,)]
    assert events(AuditAction.SNAPSHOT_RESTORED, snapshot_id=snap.pk)[0].outcome == "refused"


def test_it_recognises_a_configured_target_written_with_another_postgres_scheme(pg_target):
    name, url = pg_target
    snap = take_snapshot(name, actor=ACTOR)
    other_spelling = "postgres://" + url.split("://", 1)[1]
    assert other_spelling != url
    with pytest.raises(SnapshotError, match="it is the database of target 'snapt'"):
        restore_snapshot(snap.pk, other_spelling, actor=ACTOR)
    assert pg_query(url, "SELECT count(*) FROM items") == [(25,)]


def test_it_recognises_a_configured_target_by_the_servers_identity_not_the_host_string(pg_target):
    name, url = pg_target
    snap = take_snapshot(name, actor=ACTOR)
    assert "@127.0.0.1:" in url
    same_server = url.replace("@127.0.0.1:", "@localhost:", 1)
    before = pg_query(url, "SELECT id, name, price FROM items ORDER BY id")

    with pytest.raises(SnapshotError, match="it is the database of target 'snapt'") as refused:
        restore_snapshot(snap.pk, same_server, actor=ACTOR)

    assert refused.value.reason == "is_target"
    assert pg_query(url, "SELECT id, name, price FROM items ORDER BY id") == before
    assert pg_query(url, "SELECT version_num FROM alembic_version ORDER BY 1") == [("h8",), ("x1",)]
    event = events(AuditAction.SNAPSHOT_RESTORED, snapshot_id=snap.pk)
    assert [(e.outcome, e.detail["reason"]) for e in event] == [("refused", "is_target")]


def test_another_database_on_the_same_server_is_not_taken_for_the_target(pg_target, pg_database_factory):
    name, url = pg_target
    snap = take_snapshot(name, actor=ACTOR)
    other = pg_database_factory().replace("@127.0.0.1:", "@localhost:", 1)

    result = restore_snapshot(snap.pk, other, actor=ACTOR)

    assert result["heads"] == ["h8", "x1"]


def test_snapshot_files_are_0600_in_a_0700_directory_whatever_the_umask(pg_target, sqlite_target, tmp_path, settings):
    settings.OPS_SNAPSHOT_DIR = tmp_path / "fresh" / "snapshots"
    old = os.umask(0o022)
    try:
        for name in (pg_target[0], sqlite_target[0]):
            snap = take_snapshot(name, actor=ACTOR)
            assert stat.S_IMODE(snapshot_path(snap).stat().st_mode) == 0o600, name
    finally:
        os.umask(old)
    assert stat.S_IMODE(Path(settings.OPS_SNAPSHOT_DIR).stat().st_mode) == 0o700


def test_an_existing_snapshot_directory_open_to_others_is_closed_to_0700(sqlite_target, tmp_path, settings):
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    settings.OPS_SNAPSHOT_DIR = directory

    snap = take_snapshot(sqlite_target[0], actor=ACTOR)

    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(snapshot_path(snap).stat().st_mode) == 0o600


def test_it_refuses_an_unknown_snapshot_id():
    with pytest.raises(SnapshotError, match="Snapshot #999999 does not exist"):
        restore_snapshot(999999, "postgresql://postgres@127.0.0.1/none", actor=ACTOR)


# -------------------------------------------------------------------- faults
def assert_failed_take(excinfo, name: str, text: str, directory: Path) -> Snapshot:
    assert text in str(excinfo.value)
    snap = Snapshot.objects.get(pk=excinfo.value.snapshot_id)
    assert snap.status == SnapshotStatus.FAILED and text in snap.error and snap.finished_at
    assert not snap.path and not snap.sha256
    event = events(AuditAction.SNAPSHOT_FAILED, snapshot_id=snap.pk)
    assert len(event) == 1 and text in event[0].message and event[0].target_name == name
    assert event[0].detail["phase"] == "take"
    assert no_partial_files(directory) and not events(AuditAction.SNAPSHOT_TAKEN)
    return snap


def test_a_missing_pg_dump_fails_with_a_clear_error(pg_target, settings):
    name, url = pg_target
    settings.OPS_PG_DUMP = "/nonexistent/pg_dump"
    with pytest.raises(SnapshotError) as excinfo:
        take_snapshot(name, actor=ACTOR)
    assert_failed_take(
        excinfo, name, "pg_dump not found: '/nonexistent/pg_dump' does not exist", settings.OPS_SNAPSHOT_DIR
    )
    assert "set OPS_PG_DUMP" in str(excinfo.value)
    assert not list(Path(settings.OPS_SNAPSHOT_DIR).iterdir())
    assert pg_query(url, "SELECT version_num FROM alembic_version ORDER BY 1") == [("h8",), ("x1",)]


def test_a_target_that_is_down_fails_with_a_masked_error(configure_target, branchy_scripts, settings):
    name = configure_target("downt", "postgresql://app:s3cret@127.0.0.1:1/nothing", branchy_scripts.ini)
    with pytest.raises(SnapshotError) as excinfo:
        take_snapshot(name, actor=ACTOR)
    snap = assert_failed_take(excinfo, name, "Target 'downt' is unreachable", settings.OPS_SNAPSHOT_DIR)
    assert "s3cret" not in snap.error and "s3cret" not in str(excinfo.value)
    assert not AuditEvent.objects.filter(message__contains="s3cret").exists()


def test_an_unwritable_snapshot_directory_fails_with_a_clear_error(pg_target, tmp_path, settings):
    # Tests run as root, where chmod does not stop writes: a directory whose
    # parent is a regular file gives a real OSError instead.
    name, url = pg_target
    (tmp_path / "afile").write_text("not a directory")
    settings.OPS_SNAPSHOT_DIR = tmp_path / "afile" / "snaps"
    with pytest.raises(SnapshotError) as excinfo:
        take_snapshot(name, actor=ACTOR)
    assert_failed_take(excinfo, name, "cannot be created: Not a directory. Check OPS_SNAPSHOT_DIR", tmp_path)
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_a_pg_dump_older_than_the_server_is_refused():
    with pytest.raises(SnapshotError, match=r"pg_dump 'pg_dump \(PostgreSQL\) 14.9' is older than the server"):
        check_tool_not_older("pg_dump (PostgreSQL) 14.9", 150020, "15.2")
    check_tool_not_older("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", 150020, "15.2")
    check_tool_not_older("pg_dump (PostgreSQL) 16.1", 150020, "15.2")


def old_pg_dump(directory: Path) -> Path:
    """A pg_dump that reports major version 9 (older than any server here); otherwise the real one."""
    script = directory / "pg_dump"
    script.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "pg_dump (PostgreSQL) 9.6.24"; exit 0; }\nexec pg_dump "$@"\n'
    )
    script.chmod(0o755)
    return script


def test_a_pg_dump_older_than_the_server_fails_the_take_with_a_failed_row(pg_target, tmp_path, settings):
    name, url = pg_target
    settings.OPS_PG_DUMP = str(old_pg_dump(tmp_path))
    with pytest.raises(SnapshotError) as excinfo:
        take_snapshot(name, actor=ACTOR)
    assert_failed_take(
        excinfo, name, "pg_dump 'pg_dump (PostgreSQL) 9.6.24' is older than the server", settings.OPS_SNAPSHOT_DIR
    )
    assert "point OPS_PG_DUMP at it" in str(excinfo.value)
    assert not list(Path(settings.OPS_SNAPSHOT_DIR).iterdir())
    assert pg_query(url, "SELECT count(*) FROM items") == [(25,)]


def test_a_full_disk_fails_with_a_clear_error_and_no_partial_file(pg_target, settings):
    # A real write error from the kernel: the file-size limit (RLIMIT_FSIZE) makes
    # writes past 1 KB fail with EFBIG, as a full disk fails them with ENOSPC.
    # Python ignores SIGXFSZ, so the write raises OSError instead of killing the process.
    import resource

    name, url = pg_target
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        with pytest.raises(SnapshotError) as excinfo:
            take_snapshot(name, actor=ACTOR)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert_failed_take(excinfo, name, "Cannot write the snapshot file in", settings.OPS_SNAPSHOT_DIR)
    assert "File too large" in str(excinfo.value)
    assert not list(Path(settings.OPS_SNAPSHOT_DIR).iterdir())
    assert pg_query(url, "SELECT version_num FROM alembic_version ORDER BY 1") == [("h8",), ("x1",)]


def test_an_unknown_target_is_refused_without_a_row():
    with pytest.raises(TargetNotConfigured, match="Target 'nope' is not configured"):
        take_snapshot("nope", actor=ACTOR)
    assert not Snapshot.objects.exists()


# -------------------------------------------------------------------- sqlite
def test_sqlite_take_verify_restore_round_trip(sqlite_target, tmp_path):
    name, _ = sqlite_target
    snap = take_snapshot(name, actor=ACTOR)
    assert snap.status == SnapshotStatus.VERIFIED and snap.format == "sqlite" and snap.heads == ["d4"]
    assert snap.dump_tool_version.startswith("sqlite3 ")

    result = restore_snapshot(snap.pk, f"sqlite:///{tmp_path / 'restored.sqlite3'}", actor=ACTOR)
    assert result == {
        "snapshot": snap.pk,
        "into": f"sqlite:///{tmp_path / 'restored.sqlite3'}",
        "destination": "",
        "heads": ["d4"],
        "row_counts": {"alembic_version": 1, "items": 3},
        "items": 0,
    }


def test_sqlite_flipped_byte_fails_verification(sqlite_target):
    snap = take_snapshot(sqlite_target[0], actor=ACTOR)
    flip_one_byte(snapshot_path(snap), offset=snap.size - 10)
    snap = verify_snapshot(snap, actor=ACTOR)
    assert snap.status == SnapshotStatus.FAILED and "checksum mismatch" in snap.error
    assert events(AuditAction.SNAPSHOT_FAILED, snapshot_id=snap.pk)


def test_sqlite_deleted_file_fails_verification_and_cannot_be_restored(sqlite_target, tmp_path):
    snap = take_snapshot(sqlite_target[0], actor=ACTOR)
    snapshot_path(snap).unlink()
    snap = verify_snapshot(snap, actor=ACTOR)
    assert snap.status == SnapshotStatus.FAILED and "is missing (deleted outside the console)" in snap.error
    assert events(AuditAction.SNAPSHOT_FAILED, snapshot_id=snap.pk)[0].message == snap.error
    into = tmp_path / "never.sqlite3"
    with pytest.raises(SnapshotError, match="only a complete or verified snapshot can be restored"):
        restore_snapshot(snap.pk, f"sqlite:///{into}", actor=ACTOR)
    assert not into.exists()


def test_sqlite_heads_changing_during_the_dump_fail_the_snapshot(sqlite_target, settings):
    name, path = sqlite_target

    def migrate_meanwhile(_size: int) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE alembic_version SET version_num = 'c3'")

    with pytest.raises(SnapshotError) as excinfo:
        take_snapshot(name, actor=ACTOR, progress=migrate_meanwhile)
    assert_failed_take(excinfo, name, "heads changed during dump (from ['d4'] to ['c3'])", settings.OPS_SNAPSHOT_DIR)
    assert not list(Path(settings.OPS_SNAPSHOT_DIR).iterdir())


def test_sqlite_restore_refuses_an_existing_file(sqlite_target, tmp_path):
    snap = take_snapshot(sqlite_target[0], actor=ACTOR)
    existing = tmp_path / "existing.sqlite3"
    existing.write_bytes(b"precious")
    with pytest.raises(SnapshotError, match="the file already exists and is not empty"):
        restore_snapshot(snap.pk, f"sqlite:///{existing}", actor=ACTOR)
    assert existing.read_bytes() == b"precious"
    assert events(AuditAction.SNAPSHOT_RESTORED, snapshot_id=snap.pk)[0].outcome == "refused"


# --------------------------------------------------------------------- prune
def test_prune_keeps_the_newest_verified_and_the_one_attached_to_an_open_request(sqlite_target):
    name, _ = sqlite_target
    attached, plain, broken, newest = (take_snapshot(name, actor=ACTOR) for _ in range(4))
    snapshot_path(broken).unlink()
    verify_snapshot(broken, actor=ACTOR)
    for age, snap in zip((40, 30, 20, 10), (attached, plain, broken, newest), strict=True):
        Snapshot.objects.filter(pk=snap.pk).update(started_at=timezone.now() - timedelta(days=age))
    RollbackRequest.objects.create(
        target=attached.target, reason="test", to_revision_input="b2", to_revision="b2", snapshot=attached
    )

    pruned = prune_snapshots(actor=ACTOR, target_name=name, keep=0, older_than_days=1)

    assert sorted(s.pk for s in pruned) == sorted([plain.pk, broken.pk])
    statuses = dict(Snapshot.objects.values_list("pk", "status"))
    assert statuses == {attached.pk: "verified", plain.pk: "pruned", broken.pk: "pruned", newest.pk: "verified"}
    assert not snapshot_path(plain).exists() and snapshot_path(attached).exists() and snapshot_path(newest).exists()
    assert sorted(e.snapshot_id for e in events(AuditAction.SNAPSHOT_PRUNED)) == sorted([plain.pk, broken.pk])
    assert Snapshot.objects.get(pk=plain.pk).pruned_at is not None


def test_prune_keeps_the_n_newest_and_anything_younger_than_the_cutoff(sqlite_target):
    name, _ = sqlite_target
    snaps = [take_snapshot(name, actor=ACTOR) for _ in range(4)]
    for age, snap in zip((9, 8, 7, 0), snaps, strict=True):
        Snapshot.objects.filter(pk=snap.pk).update(started_at=timezone.now() - timedelta(days=age))

    pruned = prune_snapshots(actor=ACTOR, target_name=name, keep=2, older_than_days=5)

    assert [s.pk for s in pruned] == [snaps[0].pk, snaps[1].pk]
    assert prune_snapshots(actor=ACTOR, target_name=name, keep=0, older_than_days=30) == []
    assert Snapshot.objects.filter(status="verified").count() == 2


# --------------------------------------------------------------------- admin
def test_the_snapshot_changelist_shows_size_heads_and_short_checksum(client, auditor, sqlite_target):
    snap = take_snapshot(sqlite_target[0], actor=ACTOR)
    client.force_login(auditor)
    page = client.get(reverse("admin:opsapp_snapshot_changelist"))
    assert page.status_code == 200
    body = page.content.decode()
    assert snap.sha256[:12] in body and "d4" in body and "KB" in body
    assert client.get(reverse("admin:opsapp_snapshot_add")).status_code == 403
    assert client.get(reverse("admin:opsapp_snapshot_change", args=[snap.pk])).status_code == 200
    assert client.post(reverse("admin:opsapp_snapshot_delete", args=[snap.pk])).status_code == 403


def test_an_operator_takes_a_snapshot_from_the_admin(client, operator, sqlite_target):
    client.force_login(operator)
    target = take_snapshot(sqlite_target[0], actor=ACTOR).target
    response = client.post(reverse("admin:opsapp_snapshot_take"), {"target": target.pk}, follow=True)
    assert response.status_code == 200
    # The request only queues it: the page is the operation's, refreshing itself while it waits.
    assert "queued as operation" in response.content.decode()
    assert '<meta http-equiv="refresh" content="2">' in response.content.decode()
    assert Snapshot.objects.count() == 1
    assert run_queued_jobs() == 1
    page = client.get(response.redirect_chain[-1][0]).content.decode()
    newest = Snapshot.objects.order_by("-id").first()
    assert newest.taken_by == "olga" and newest.status == SnapshotStatus.VERIFIED
    assert f"Snapshot #{newest.pk} of lite taken and verified" in page
    assert 'http-equiv="refresh"' not in page  # finished: no more refreshing
    assert events(AuditAction.SNAPSHOT_TAKEN, snapshot_id=newest.pk)[0].actor == "olga"


def test_an_auditor_cannot_take_a_snapshot_from_the_admin(client, auditor, sqlite_target):
    target = take_snapshot(sqlite_target[0], actor=ACTOR).target
    before = Snapshot.objects.count()
    client.force_login(auditor)
    assert client.post(reverse("admin:opsapp_snapshot_take"), {"target": target.pk}).status_code == 403
    assert Snapshot.objects.count() == before
    client.force_login(auditor)
    assert client.get(reverse("admin:opsapp_snapshot_take")).status_code in (403, 405)


def test_the_take_url_only_accepts_post(client, operator):
    client.force_login(operator)
    assert client.get(reverse("admin:opsapp_snapshot_take")).status_code == 405


def test_the_verify_action_rechecks_the_selected_snapshots(client, operator, auditor, sqlite_target):
    snap = take_snapshot(sqlite_target[0], actor=ACTOR)
    flip_one_byte(snapshot_path(snap), offset=snap.size - 10)
    url = reverse("admin:opsapp_snapshot_changelist")
    data = {"action": "verify_selected", "_selected_action": [snap.pk]}

    client.force_login(auditor)
    client.post(url, data)
    assert Snapshot.objects.get(pk=snap.pk).status == SnapshotStatus.VERIFIED

    client.force_login(operator)
    response = client.post(url, data, follow=True)
    assert Snapshot.objects.get(pk=snap.pk).status == SnapshotStatus.FAILED
    assert "checksum mismatch" in response.content.decode()
    assert events(AuditAction.SNAPSHOT_FAILED, snapshot_id=snap.pk)[0].actor == "olga"


def test_the_target_page_offers_take_snapshot_to_operators_only(client, operator, auditor, sqlite_target):
    target = take_snapshot(sqlite_target[0], actor=ACTOR).target
    url = reverse("admin:opsapp_target_change", args=[target.pk])
    client.force_login(operator)
    page = client.get(url).content.decode()
    assert 'id="take-snapshot"' in page and reverse("admin:opsapp_snapshot_take") in page
    client.force_login(auditor)
    assert 'id="take-snapshot"' not in client.get(url).content.decode()


# ------------------------------------------------------- audit failures, crashes
def fail_on(monkeypatch, action: str) -> None:
    """Make the audit write of `action` fail the way a database error would (the others still write)."""
    from opsapp.services.snapshots import lifecycle as snapshots

    real = snapshots.append_event

    def append_event(**kwargs):
        if kwargs["action"] == action:
            raise RuntimeError("audit table unavailable")
        return real(**kwargs)

    monkeypatch.setattr(snapshots, "append_event", append_event)


def test_a_take_whose_audit_write_fails_leaves_no_file_and_a_failed_row(sqlite_target, monkeypatch, settings):
    name, _ = sqlite_target
    fail_on(monkeypatch, AuditAction.SNAPSHOT_TAKEN)

    with pytest.raises(SnapshotError) as excinfo:
        take_snapshot(name, actor=ACTOR)

    snap = assert_failed_take(excinfo, name, "audit table unavailable", settings.OPS_SNAPSHOT_DIR)
    assert snap.status == SnapshotStatus.FAILED
    assert not list(Path(settings.OPS_SNAPSHOT_DIR).iterdir())  # not even the renamed, complete-looking file


def test_a_prune_whose_audit_write_fails_keeps_the_file_and_the_row(sqlite_target, monkeypatch):
    name, _ = sqlite_target
    old, newest = take_snapshot(name, actor=ACTOR), take_snapshot(name, actor=ACTOR)
    Snapshot.objects.filter(pk=old.pk).update(started_at=timezone.now() - timedelta(days=10))
    fail_on(monkeypatch, AuditAction.SNAPSHOT_PRUNED)

    with pytest.raises(RuntimeError, match="audit table unavailable"):
        prune_snapshots(actor=ACTOR, target_name=name, keep=0, older_than_days=1)

    assert Snapshot.objects.get(pk=old.pk).status == SnapshotStatus.VERIFIED
    assert snapshot_path(old).exists() and snapshot_file_problem(old) is None
    assert not events(AuditAction.SNAPSHOT_PRUNED)
    assert newest.status == SnapshotStatus.VERIFIED


def test_prune_fails_a_snapshot_abandoned_in_running_and_removes_its_partial_file(sqlite_target, settings):
    name, _ = sqlite_target
    ok = take_snapshot(name, actor=ACTOR)
    stuck = Snapshot.objects.create(target=ok.target, status=SnapshotStatus.RUNNING, format="sqlite", taken_by="x")
    fresh = Snapshot.objects.create(target=ok.target, status=SnapshotStatus.RUNNING, format="sqlite", taken_by="y")
    Snapshot.objects.filter(pk=stuck.pk).update(started_at=timezone.now() - timedelta(days=2))
    directory = Path(settings.OPS_SNAPSHOT_DIR)
    partial = directory / f".{name}-20260101T000000Z-{stuck.pk}.sqlite3.partial"
    partial.write_bytes(b"half a dump")
    other = directory / f".{name}-20260101T000000Z-{fresh.pk}.sqlite3.partial"
    other.write_bytes(b"still being written")

    prune_snapshots(actor=ACTOR, target_name=name, keep=5, older_than_days=30)
    prune_snapshots(actor=ACTOR, target_name=name, keep=5, older_than_days=30)  # overlapping cron: once only

    stuck.refresh_from_db()
    assert stuck.status == SnapshotStatus.FAILED and "abandoned" in stuck.error and stuck.finished_at
    assert not partial.exists()
    assert other.exists() and Snapshot.objects.get(pk=fresh.pk).status == SnapshotStatus.RUNNING
    failed = events(AuditAction.SNAPSHOT_FAILED, snapshot_id=stuck.pk)
    assert len(failed) == 1 and failed[0].detail["phase"] == "abandoned"
    assert Snapshot.objects.get(pk=ok.pk).status == SnapshotStatus.VERIFIED
