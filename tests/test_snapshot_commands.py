"""The snapshot management commands: --json output, exit codes, and two real processes at once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from opsapp.models import AuditAction, AuditEvent, Snapshot, SnapshotStatus
from opsapp.services.snapshots.files import sha256_file
from opsapp.services.snapshots.lifecycle import snapshot_path
from tests.conftest import REPO_ROOT, pg_query
from tests.test_snapshots import fill_pg, fill_sqlite, flip_one_byte

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[object, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    text = out.getvalue()
    return (json.loads(text) if "--json" in args else text), err.getvalue()


@pytest.fixture
def pg_target(pg_url, configure_target, branchy_scripts) -> tuple[str, str]:
    fill_pg(pg_url)
    return configure_target("cmdt", pg_url, branchy_scripts.ini), pg_url


@pytest.fixture
def sqlite_target(tmp_path, configure_target, branchy_scripts) -> str:
    return configure_target("litecmd", fill_sqlite(tmp_path / "lite.sqlite3"), branchy_scripts.ini)


def test_take_snapshot_json_prints_id_status_sha256_size_and_heads(pg_target):
    data, _ = run("take_snapshot", "--target", pg_target[0], "--json")
    snap = Snapshot.objects.get()
    assert data == {
        "target": "cmdt",
        "id": snap.pk,
        "status": "verified",
        "sha256": snap.sha256,
        "size": snap.size,
        "heads": ["h8", "x1"],
    }
    assert sha256_file(snapshot_path(snap)) == snap.sha256


def test_take_snapshot_prints_a_human_line_without_json(sqlite_target):
    text, _ = run("take_snapshot", "--target", sqlite_target)
    assert "Snapshot #" in text and "of litecmd: verified" in text and "heads d4" in text


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr is when a person runs the command."""

    def isatty(self) -> bool:
        return True


def test_take_snapshot_shows_the_bytes_written_on_a_terminal_only(pg_target):
    out, err = io.StringIO(), Terminal()
    call_command("take_snapshot", "--target", pg_target[0], stdout=out, stderr=err)
    snap = Snapshot.objects.get()
    assert f"\r  {filesizeformat(snap.size)} written " in err.getvalue()
    assert err.getvalue().endswith("\n") and "written" not in out.getvalue()

    quiet = io.StringIO()  # not a terminal (cron, a pipe): no progress
    call_command("take_snapshot", "--target", pg_target[0], stdout=io.StringIO(), stderr=quiet)
    json_err = Terminal()  # --json on a terminal: stdout is for the machine, stderr stays quiet too
    call_command("take_snapshot", "--target", pg_target[0], "--json", stdout=io.StringIO(), stderr=json_err)
    assert quiet.getvalue() == "" and json_err.getvalue() == ""


def test_take_snapshot_exits_1_with_the_error_when_pg_dump_is_missing(pg_target, settings):
    settings.OPS_PG_DUMP = "/nonexistent/pg_dump"
    out = io.StringIO()
    with pytest.raises(CommandError, match="pg_dump not found") as excinfo:
        call_command("take_snapshot", "--target", pg_target[0], "--json", stdout=out)
    assert excinfo.value.returncode == 1
    data = json.loads(out.getvalue())
    assert data["status"] == "failed" and "pg_dump not found" in data["error"]
    assert Snapshot.objects.get(pk=data["id"]).status == SnapshotStatus.FAILED
    assert AuditEvent.objects.filter(action=AuditAction.SNAPSHOT_FAILED, snapshot_id=data["id"]).exists()


def test_take_snapshot_of_an_unknown_target_is_bad_usage():
    with pytest.raises(CommandError, match="Target 'nope' is not configured") as excinfo:
        call_command("take_snapshot", "--target", "nope")
    assert excinfo.value.returncode == 2 and not Snapshot.objects.exists()


def test_verify_snapshots_exits_1_and_names_the_altered_snapshot(sqlite_target):
    good, _ = run("take_snapshot", "--target", sqlite_target, "--json")
    bad, _ = run("take_snapshot", "--target", sqlite_target, "--json")
    flip_one_byte(snapshot_path(Snapshot.objects.get(pk=bad["id"])), offset=bad["size"] - 10)
    out = io.StringIO()
    with pytest.raises(CommandError, match=f"1 snapshot\\(s\\) failed verification: #{bad['id']}") as excinfo:
        call_command("verify_snapshots", "--target", sqlite_target, "--json", stdout=out)
    assert excinfo.value.returncode == 1
    by_id = {row["id"]: row for row in json.loads(out.getvalue())}
    assert by_id[good["id"]]["status"] == "verified" and by_id[bad["id"]]["status"] == "failed"
    assert "checksum mismatch" in by_id[bad["id"]]["error"]


def test_verify_snapshots_exits_0_when_everything_checks_out(sqlite_target):
    run("take_snapshot", "--target", sqlite_target)
    data, _ = run("verify_snapshots", "--json")
    assert [row["status"] for row in data] == ["verified"]


def test_prune_snapshots_json_lists_what_it_pruned(sqlite_target):
    old, _ = run("take_snapshot", "--target", sqlite_target, "--json")
    run("take_snapshot", "--target", sqlite_target, "--json")
    Snapshot.objects.filter(pk=old["id"]).update(started_at=timezone.now() - timedelta(days=10))
    data, _ = run("prune_snapshots", "--target", sqlite_target, "--keep", "0", "--older-than", "7", "--json")
    assert [row["id"] for row in data] == [old["id"]] and data[0]["status"] == "pruned"
    assert Snapshot.objects.filter(status="verified").count() == 1


def test_prune_snapshots_refuses_negative_numbers_as_bad_usage():
    with pytest.raises(CommandError, match="must be zero or more") as excinfo:
        call_command("prune_snapshots", "--keep", "-1", "--older-than", "3")
    assert excinfo.value.returncode == 2


def test_restore_snapshot_json_reports_heads_and_row_counts(pg_target, pg_database_factory):
    taken, _ = run("take_snapshot", "--target", pg_target[0], "--json")
    into = pg_database_factory()
    data, _ = run("restore_snapshot", str(taken["id"]), "--into", into, "--json")
    assert data.pop("items") >= 2  # pg_restore --verbose items: at least the two tables' data
    assert data == {
        "snapshot": taken["id"],
        "into": into,
        "destination": "",
        "heads": ["h8", "x1"],
        "row_counts": {"alembic_version": 2, "items": 25},
    }


def test_restore_snapshot_masks_the_password_and_refuses_a_non_empty_database(pg_target, pg_database_factory):
    taken, _ = run("take_snapshot", "--target", pg_target[0], "--json")
    into = pg_database_factory()
    pg_query(into, "CREATE TABLE t (id int)")
    with_password = into.replace("postgres@", "postgres:hunter2@")
    with pytest.raises(CommandError, match="it is not empty") as excinfo:
        call_command("restore_snapshot", str(taken["id"]), "--into", with_password)
    assert excinfo.value.returncode == 1 and "hunter2" not in str(excinfo.value) and "***" in str(excinfo.value)


def test_restore_snapshot_into_the_target_spelt_localhost_is_refused_as_the_target(pg_target):
    name, url = pg_target
    taken, _ = run("take_snapshot", "--target", name, "--json")
    same_server = url.replace("@127.0.0.1:", "@localhost:", 1)
    assert same_server != url

    with pytest.raises(CommandError, match="it is the database of target 'cmdt'") as excinfo:
        call_command("restore_snapshot", str(taken["id"]), "--into", same_server)

    assert excinfo.value.returncode == 1 and "not empty" not in str(excinfo.value)
    assert pg_query(url, "SELECT count(*) FROM items") == [(25,)]
    refused = AuditEvent.objects.get(action=AuditAction.SNAPSHOT_RESTORED, snapshot_id=taken["id"])
    assert refused.outcome == "refused" and refused.detail["reason"] == "is_target"


def test_restore_snapshot_of_an_unknown_id_is_bad_usage():
    with pytest.raises(CommandError, match="Snapshot #424242 does not exist") as excinfo:
        call_command("restore_snapshot", "424242", "--into", "postgresql://postgres@127.0.0.1/x")
    assert excinfo.value.returncode == 2


# --------------------------------------------------------------- real processes
def _process_env(name: str, url: str, ini: Path, snapshot_dir: Path, console_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_TARGET")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "console.settings_test",
            "DATABASE_URL": console_url,
            "OPS_TARGETS": name,
            f"OPS_TARGET_{name.upper()}_URL": url,
            f"OPS_TARGET_{name.upper()}_ALEMBIC_INI": str(ini),
            "OPS_SNAPSHOT_DIR": str(snapshot_dir),
        }
    )
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_two_take_snapshot_processes_at_once_leave_two_sane_snapshots(pg_database_factory, branchy_scripts, tmp_path):
    # The processes need committed console rows, and the audit table refuses the
    # TRUNCATE a transactional test would end with: they get a console database
    # of their own, migrated here and dropped by the fixture.
    console_url = pg_database_factory()
    target_url = pg_database_factory()
    fill_pg(target_url)
    # Enough data that the two dumps overlap.
    pg_query(target_url, "CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g")
    directory = tmp_path / "shared-snaps"
    env = _process_env("conc", target_url, branchy_scripts.ini, directory, console_url)
    migrate = manage(env, "migrate", "--noinput", "-v", "0")
    assert migrate.wait(timeout=300) == 0, migrate.stderr.read().decode()

    procs = [manage(env, "take_snapshot", "--target", "conc", "--json") for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read().decode(), p.stderr.read().decode()) for p in procs]

    ok = [json.loads(out) for code, out, _ in results if code == 0]
    refused = [err for code, _, err in results if code != 0]
    assert ok and len(ok) + len(refused) == 2, results
    for err in refused:  # a refusal is a clear message, never a traceback
        assert "Traceback" not in err and "Snapshot failed" in err
    rows = pg_query(console_url, "SELECT id, status, sha256, path, heads::text FROM opsapp_snapshot ORDER BY id")
    assert len(rows) == 2 and len({row["id"] for row in ok}) == len(ok)
    for row in ok:
        snap_id, status, sha, path, heads = next(r for r in rows if r[0] == row["id"])
        assert status == "verified" and heads == '["h8", "x1"]' and sha == row["sha256"]
        assert sha256_file(directory / path) == sha
        listing = subprocess.run(["pg_restore", "--list", str(directory / path)], capture_output=True, text=True)
        assert listing.returncode == 0 and "TABLE DATA public bulk" in listing.stdout
    assert sorted(p.name for p in directory.iterdir()) == sorted(r[3] for r in rows if r[1] == "verified")
    audited = pg_query(console_url, "SELECT action FROM opsapp_auditevent ORDER BY seq")
    assert [a for (a,) in audited].count("snapshot_taken") == len(ok)


def test_bad_usage_exits_2_on_the_command_line(tmp_path):
    env = _process_env("usage", "postgresql://postgres@127.0.0.1:5432/unused", tmp_path / "alembic.ini", tmp_path, "")
    env.pop("DATABASE_URL")
    done = subprocess.run(
        [sys.executable, "manage.py", "prune_snapshots", "--older-than", "3"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "the following arguments are required: --keep" in done.stderr
