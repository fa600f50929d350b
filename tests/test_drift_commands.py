"""sync_revisions, show_revisions and check_drift: output, JSON shape and every exit code."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import pg_query, repo_path
from tests.histories import alembic_heads, generate_history, run_alembic

pytestmark = pytest.mark.django_db
REVISION_KEYS = {
    "revision",
    "down_revisions",
    "branch_labels",
    "depends_on",
    "message",
    "create_date",
    "is_head",
    "is_base",
    "is_branch_point",
    "is_merge_point",
    "applied",
    "is_current",
}


@pytest.fixture(autouse=True)
def _only_our_targets(settings):
    settings.OPS_TARGETS = {}


@pytest.fixture
def linear(script_dir_factory, pg_url, configure_target) -> str:
    sd = script_dir_factory()
    sd.add("l1", None, message="one")
    sd.add("l2", "l1", message="two")
    sd.add("l3", "l2", message="three")
    return configure_target("linear", pg_url, sd.ini)


@pytest.fixture
def branchy(branchy_scripts, pg_url, configure_target) -> str:
    return configure_target("branchy", pg_url, branchy_scripts.ini)


def run(name: str, *args: str) -> tuple[int, str]:
    """(exit code, stdout) of a command, exit code as manage.py would return it."""
    out = io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


def show_json(*args: str):
    code, out = run("show_revisions", "--json", *args)
    assert code == 0
    return json.loads(out)


def assert_agrees_with_alembic(data: dict, ini) -> None:
    alembic = alembic_heads(ini)
    assert sorted(data["heads"]) == alembic["heads"]
    revisions = data["revisions"]
    assert all(set(rev) == REVISION_KEYS for rev in revisions)
    assert [rev["revision"] for rev in revisions] == alembic["walk"]  # `alembic history` order
    assert sorted(rev["revision"] for rev in revisions if rev["is_head"]) == alembic["heads"]
    assert sorted(rev["revision"] for rev in revisions if rev["is_base"]) == alembic["bases"]
    assert sorted(rev["revision"] for rev in revisions if rev["is_branch_point"]) == alembic["branch_points"]
    assert sorted(rev["revision"] for rev in revisions if rev["is_merge_point"]) == alembic["merge_points"]
    assert {rev["revision"]: rev["down_revisions"] for rev in revisions} == alembic["down"]
    assert {rev["revision"]: rev["branch_labels"] for rev in revisions} == alembic["labels"]
    assert {rev["revision"]: rev["message"] for rev in revisions} == alembic["messages"]


# ------------------------------------------------------------ show_revisions
def test_show_revisions_json_has_the_documented_shape_and_agrees_with_alembic(branchy, branchy_scripts):
    run_alembic(branchy, "upgrade", "e5")

    data = show_json("--target", branchy)

    assert set(data) == {"target", "state", "current", "heads", "revisions"}
    assert (data["target"], data["state"], data["current"]) == ("branchy", "multiple_heads", ["e5"])
    assert_agrees_with_alembic(data, branchy_scripts.ini)
    by_id = {rev["revision"]: rev for rev in data["revisions"]}
    assert by_id["e5"]["depends_on"] == ["c3"] and by_id["e5"]["is_current"] and by_id["c3"]["applied"]
    assert not by_id["d4"]["applied"]
    assert by_id["x1"]["create_date"] is None and by_id["a1"]["create_date"] == "2026-01-01 00:00:00"


def test_show_revisions_json_agrees_with_alembic_on_a_thousand_revisions(script_dir_factory, pg_url, configure_target):
    sd = script_dir_factory()
    generate_history(sd, 1000, merges=30, seed=11)
    name = configure_target("big", pg_url, sd.ini)

    data = show_json("--target", name)

    assert len(data["revisions"]) == 1000
    assert sum(rev["is_merge_point"] for rev in data["revisions"]) == 30
    assert_agrees_with_alembic(data, sd.ini)


def test_show_revisions_json_agrees_with_alembic_on_the_demo_target(pg_url, configure_target):
    name = configure_target("shop", pg_url, repo_path("alembic.ini"))
    data = show_json("--target", name)
    assert len(data["revisions"]) >= 10
    assert any(rev["is_merge_point"] for rev in data["revisions"])
    assert any(rev["branch_labels"] for rev in data["revisions"])
    assert_agrees_with_alembic(data, repo_path("alembic.ini"))


def test_show_revisions_without_target_lists_every_target_and_prints_text(linear, branchy):
    data = show_json()
    assert [obj["target"] for obj in data] == ["linear", "branchy"]
    code, out = run("show_revisions", "--target", "branchy")
    assert code == 0
    assert "d4, f6 -> g7 (mergepoint) [pending], merge left and right" in out
    assert "<base> -> x1 (other) (head) (base) [pending]" in out


def test_commands_refuse_an_unknown_target_as_bad_usage(linear):
    for command in ("show_revisions", "sync_revisions", "check_drift"):
        code, out = run(command, "--target", "nope")
        assert code == 2 and "Unknown target 'nope'. Configured targets: linear." in out


# ------------------------------------------------------------ sync_revisions
def test_sync_revisions_reports_each_target_and_rereads_only_changes(linear, branchy_scripts, configure_target):
    code, out = run("sync_revisions")
    assert code == 0 and "linear: empty; 3 revisions (re-read)" in out
    code, out = run("sync_revisions", "--json", "--target", "linear")
    assert code == 0 and json.loads(out)["reread"] is False
    configure_target("down", "postgresql://u:s3cret@127.0.0.1:1/nope", branchy_scripts.ini)
    code, out = run("sync_revisions")
    assert code == 1 and "sync incomplete for: down" in out and "s3cret" not in out


# --------------------------------------------------------------- check_drift
def test_check_drift_exits_0_when_every_database_is_at_head(linear):
    run_alembic(linear, "upgrade", "head")
    assert run("check_drift", "--require-head", "--single-head") == (0, "OK linear: at head, database at l3\n")


def test_check_drift_exits_0_when_behind_but_1_with_require_head(linear):
    run_alembic(linear, "stamp", "l1")
    assert run("check_drift")[0] == 0
    code, out = run("check_drift", "--require-head")
    assert code == 1
    assert "Target 'linear' is at l1, not at every head (l3); 2 revision(s) pending: run `alembic upgrade head`." in out
    assert pg_query(pg_url_of(linear), "SELECT version_num FROM alembic_version") == [("l1",)]


def test_check_drift_with_require_head_fails_an_empty_database(linear):
    code, out = run("check_drift", "--require-head", "--target", "linear")
    assert code == 1 and "has no alembic_version: run `alembic upgrade head`" in out
    assert run("check_drift", "--target", "linear")[0] == 0


def test_check_drift_exits_1_on_an_unknown_revision_and_says_what_to_do(linear):
    url = pg_url_of(linear)
    run_alembic(linear, "stamp", "l2")
    pg_query(url, "UPDATE alembic_version SET version_num = 'feedface9999'")

    code, out = run("check_drift")

    assert code == 1
    assert "PROBLEM linear: unknown revision" in out
    assert "Can't locate revision identified by 'feedface9999'" in out
    assert "head(s): l3" in out and "alembic stamp --purge l3" in out
    assert pg_query(url, "SELECT version_num FROM alembic_version") == [("feedface9999",)]
    code, out = run("check_drift", "--json", "--target", "linear")
    report = json.loads(out.split("\n")[0])
    assert code == 1 and report["ok"] is False and [p["code"] for p in report["problems"]] == ["unknown_revision"]

    run_alembic(linear, "stamp", "l3", purge=True)  # the advice given works
    assert run("check_drift", "--require-head")[0] == 0


def test_check_drift_exits_1_on_an_unreachable_database_without_its_password(branchy_scripts, configure_target):
    configure_target("down", "postgresql://u:s3cret@127.0.0.1:1/nope", branchy_scripts.ini)
    code, out = run("check_drift")
    assert code == 1 and "PROBLEM down: unreachable" in out and "s3cret" not in out


def test_check_drift_with_single_head_fails_scripts_with_two_heads(branchy):
    run_alembic(branchy, "upgrade", "heads")
    assert run("check_drift", "--require-head")[0] == 0
    code, out = run("check_drift", "--single-head")
    assert code == 1
    assert "the scripts have 2 heads: h8, x1" in out
    assert 'alembic merge -m "merge heads" h8 x1' in out


def test_check_drift_without_flags_accepts_a_database_at_one_of_two_heads(branchy):
    run_alembic(branchy, "upgrade", "h8")
    assert run("check_drift")[0] == 0
    code, out = run("check_drift", "--require-head")
    assert code == 1 and "not at every head (h8, x1)" in out and "alembic upgrade heads" in out


def test_check_drift_exits_1_when_a_script_fails_to_import(linear, settings):
    from opsapp.targets import get_target

    versions = get_target(linear).script_location / "versions"
    (versions / "zz_broken.py").write_text("revision = 'zz'\ndef broken(:\n")
    code, out = run("check_drift")
    assert code == 1 and "versions/zz_broken.py: SyntaxError" in out


def pg_url_of(name: str) -> str:
    from django.conf import settings

    return settings.OPS_TARGETS[name]["URL"]


# ------------------------------------- a broken script file, in every command
def test_every_catalog_command_names_a_file_that_fails_to_import_and_never_crashes(linear):
    from opsapp.targets import get_target

    assert run("sync_revisions")[0] == 0
    versions = get_target(linear).script_location / "versions"
    (versions / "zz_broken.py").write_text(
        "revision = 'zz'\ndown_revision = 'l3'\nraise ValueError('broken on purpose')\n"
    )

    code, out = run("sync_revisions")
    assert code == 1 and "versions/zz_broken.py" in out and "broken on purpose" in out
    code, out = run("sync_revisions", "--json", "--target", linear)
    assert code == 1
    assert json.loads(out.splitlines()[0])["sync_errors"] == [
        {"file": "versions/zz_broken.py", "error": "ValueError: broken on purpose"}
    ]
    code, out = run("show_revisions")
    assert code == 0 and "versions/zz_broken.py" in out and "broken on purpose" in out
    out, err = io.StringIO(), io.StringIO()
    call_command("show_revisions", "--json", "--target", linear, stdout=out, stderr=err)
    data = json.loads(out.getvalue())  # stdout stays the documented JSON alone
    assert data["state"] == "script_error"
    assert [rev["revision"] for rev in data["revisions"]] == ["l3", "l2", "l1"]  # the last good catalog
    assert "versions/zz_broken.py" in err.getvalue() and "broken on purpose" in err.getvalue()
    code, out = run("check_drift", "--json")
    assert code == 1 and "versions/zz_broken.py" in out


def test_sync_revisions_audits_heads_moved_outside_the_console_observed_by_the_command_user(linear):
    import getpass

    from opsapp.models import AuditAction, AuditEvent
    from opsapp.services.catalog.sync import OUTSIDE_THE_CONSOLE

    run_alembic(linear, "upgrade", "l1")
    assert run("sync_revisions")[0] == 0
    run_alembic(linear, "upgrade", "head")  # a deploy, outside the console

    assert run("sync_revisions", "--target", linear)[0] == 0

    event = AuditEvent.objects.get(action=AuditAction.HEADS_CHANGED)
    assert (event.actor, event.target_name, event.from_revision, event.to_revision) == (
        OUTSIDE_THE_CONSOLE,
        linear,
        "l1",
        "l3",
    )
    assert event.detail == {
        "old_heads": ["l1"],
        "new_heads": ["l3"],
        "observed_by": f"cli:{getpass.getuser()}",
        "observed_by_user_id": None,
        "observed_by_ip": None,
    }
