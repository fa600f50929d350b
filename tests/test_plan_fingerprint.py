"""Gate "plan" compares a fingerprint that does not depend on Python's hash seed (issue 11, item 0).

Alembic's offline SQL for a downgrade across a merge point writes the
version-table bookkeeping (which parent is INSERTed, which UPDATEd) in an order
that follows the per-process hash seed. These tests render the demo's plan in
separate processes under several seeds, and run a request made in one process
through execution in another.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.register_assert_rewrite("rollback_fixtures")

from conftest import REPO_ROOT  # noqa: E402
from rollback_fixtures import RollbackEnv, code_from_outbox, operator_actor, take_verified_snapshot  # noqa: E402

from opsapp.models import AuditEvent, RollbackRequest  # noqa: E402
from opsapp.services.rollback.fingerprint import StepMark, fingerprint, first_difference, step_digests  # noqa: E402

pytest_plugins = ["rollback_fixtures"]

DEMO_INI = REPO_ROOT / "alembic.ini"
HEAD = "c8a1d5f3b7ad"
BRANCH_POINT = "3c9b6e0f2d14"  # below the merge: the downgrade un-merges payments and reporting
SEEDS = ("1", "2", "3", "7")

_RENDER = """
import json, os, sys
import django
django.setup()
from opsapp.services.rollback.plan import render_preview
from opsapp.targets import get_target
p = render_preview(get_target("shop"), [sys.argv[1]], sys.argv[2])
print(json.dumps({"sha256": p.sha256, "fingerprint": p.fingerprint, "steps": p.steps, "heads": p.expected_heads}))
"""


def _demo_env(url: str, seed: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "console.settings_test",
            "OPS_TARGETS": "shop",
            "OPS_TARGET_SHOP_URL": url,
            "OPS_TARGET_SHOP_ALEMBIC_INI": str(DEMO_INI),
            "PYTHONHASHSEED": seed,
        }
    )
    return env


def render_in_process(seed: str, url: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _RENDER, HEAD, BRANCH_POINT],
        cwd=REPO_ROOT,
        env=_demo_env(url, seed),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_plan_fingerprint_is_the_same_under_every_hash_seed_though_the_sql_text_is_not(tmp_path):
    # Offline rendering never connects: a SQLite URL that does not exist is enough.
    url = f"sqlite:///{tmp_path / 'never-created.sqlite3'}"
    results = {seed: render_in_process(seed, url) for seed in SEEDS}

    # The fault this guards against: Alembic's own text differs between processes.
    assert len({r["sha256"] for r in results.values()}) > 1, results
    # What gate "plan" compares does not.
    assert len({r["fingerprint"] for r in results.values()}) == 1, results
    assert len({json.dumps(r["steps"]) for r in results.values()}) == 1
    assert all(r["heads"] == [BRANCH_POINT] for r in results.values())


def _marks(*steps: tuple[str, int, tuple[str, ...]]) -> list[StepMark]:
    return [StepMark((rev,), end, heads) for rev, end, heads in steps]


def _digests(sql: str, marks: list[StepMark]) -> list[dict]:
    def split(chunk: str) -> list[str]:
        return [s.strip() for s in chunk.split(";") if s.strip()]

    return step_digests(sql, marks, split=split, version_table="alembic_version")


def test_the_fingerprint_ignores_bookkeeping_order_but_not_a_migration_statement_or_the_heads():
    one = "DROP TABLE a;\nINSERT INTO alembic_version (version_num) VALUES ('x');\nUPDATE alembic_version SET v='y';\n"
    two = "DROP TABLE a;\nUPDATE alembic_version SET v='x';\nINSERT INTO alembic_version (version_num) VALUES ('y');\n"
    marks = _marks(("m", len(one), ("x", "y")))
    assert fingerprint(_digests(one, marks)) == fingerprint(_digests(two, _marks(("m", len(two), ("x", "y")))))

    other_sql = one.replace("DROP TABLE a", "DROP TABLE b")
    changed = _digests(other_sql, _marks(("m", len(other_sql), ("x", "y"))))
    assert fingerprint(changed) != fingerprint(_digests(one, marks))
    assert first_difference(_digests(one, marks), changed) == "the SQL of step 1 (m) changed"

    other_heads = _digests(one, _marks(("m", len(one), ("x",))))
    assert fingerprint(other_heads) != fingerprint(_digests(one, marks))
    assert "now leaves heads ['x'] instead of ['x', 'y']" in first_difference(_digests(one, marks), other_heads)

    # A table that merely has the version table's name as a prefix is a migration statement.
    lookalike = "DELETE FROM alembic_version_archive;\n"
    assert _digests(lookalike, _marks(("m", len(lookalike), ())))[0]["statements"] == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_request_across_the_merge_point_made_in_one_process_executes_in_another_with_another_seed(
    roles_present, pg_url, configure_target, snapshot_dir, operator, approver, settings
):
    from opsapp.services.rollback.requests import issue_code

    configure_target("shop", pg_url, DEMO_INI)
    from opsapp.services.alembic_api import connect, make_config

    env = RollbackEnv("shop", pg_url, scripts=None)  # type: ignore[arg-type]
    from alembic import command

    with connect(env.config) as conn, conn.begin():
        command.upgrade(make_config(env.config, connection=conn), "heads")
    env.sync()
    snap = take_verified_snapshot(env, operator)

    def manage(seed: str, *args: str) -> subprocess.CompletedProcess:
        child = {
            **_demo_env(pg_url, seed),
            "DATABASE_URL": _console_db_url(),
            "SECRET_KEY": settings.SECRET_KEY,
            "OPS_SNAPSHOT_DIR": str(settings.OPS_SNAPSHOT_DIR),
        }
        return subprocess.run(
            [sys.executable, str(REPO_ROOT / "manage.py"), *args],
            cwd=REPO_ROOT,
            env=child,
            capture_output=True,
            text=True,
            timeout=180,
        )

    made = manage(
        "1", "request_rollback", "--target", "shop", "--to", BRANCH_POINT, "--reason", "seed test",
        "--actor", operator.username, "--snapshot", str(snap.pk), "--json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    request = RollbackRequest.objects.get(pk=json.loads(made.stdout)["id"])
    # The code went out from the child's (in-memory) mailbox: issue a fresh one here.
    issue_code(request, actor=operator_actor(operator))
    code = code_from_outbox(request.pk, approver.email)

    # The raw preview text rendered under seed 2 differs from the stored one:
    # without the fingerprint this execution would be refused at gate "plan".
    assert render_in_process("2", pg_url)["sha256"] != request.sql_sha256

    ran = manage("2", "execute_rollback", str(request.pk), "--code", code, "--actor", operator.username, "--json")
    assert ran.returncode == 0, (ran.stdout, ran.stderr)
    assert json.loads(ran.stdout)["status"] == "succeeded"
    assert env.heads() == [BRANCH_POINT]
    assert not AuditEvent.objects.filter(request_id=request.pk, action="rollback_refused").exists()


def _console_db_url() -> str:
    from django.db import connection

    return f"postgres://postgres@127.0.0.1:5432/{connection.settings_dict['NAME']}"


@pytest.mark.django_db
def test_a_plan_whose_sql_changed_without_a_file_change_is_refused_at_gate_plan_naming_the_step(
    rollback_env, operator, approver, monkeypatch
):
    from rollback_fixtures import make_request

    from opsapp.services.errors import GateRefused
    from opsapp.services.rollback.requests import execute_request

    env = rollback_env
    # A migration whose SQL depends on the environment it is rendered in.
    env.add_revision("r4", "r3", downgrade="op.execute('SELECT ' + __import__('os').environ.get('OPS_T_N', '1'))")
    snap = take_verified_snapshot(env, operator)
    monkeypatch.setenv("OPS_T_N", "1")
    request = make_request(env, operator, to="r3", snapshot=snap)
    code = code_from_outbox(request.pk, approver.email)
    before = env.state()

    monkeypatch.setenv("OPS_T_N", "2")
    with pytest.raises(GateRefused) as refused:
        execute_request(request.pk, code=code, actor=operator_actor(operator))
    assert refused.value.gate == "plan"
    assert "the SQL of step 1 (r4) changed" in str(refused.value)
    assert env.state() == before
    request.refresh_from_db()
    assert request.status == "pending" and request.code_used_at is None
    event = AuditEvent.objects.filter(request_id=request.pk, action="rollback_refused").latest("seq")
    assert event.detail["gate"] == "plan" and "step 1 (r4)" in event.message
