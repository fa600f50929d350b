"""The quick start's pieces: `.env.example`, `make run`'s `.env`, `bootstrap_console`, the README's
command lines in a fresh checkout, clean `--json` output, and the embedded SQLite default's audit table."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import environ
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import REPO_ROOT

ENV_EXAMPLE = REPO_ROOT / ".env.example"
README = REPO_ROOT / "README.md"
PASSWORD_VARS = ("OPS_ADMIN_PASSWORD", "OPS_APPROVER_PASSWORD")


# ------------------------------------------------------------------ .env.example
def variables_the_console_reads() -> set[str]:
    """Every environment variable named in settings, the app and the demo env.py (f-strings as regexes)."""
    files = [REPO_ROOT / "console" / "settings.py", REPO_ROOT / "alembic" / "env.py"]
    files += [p for p in sorted((REPO_ROOT / "opsapp").rglob("*.py")) if "migrations" not in p.parts]
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.fullmatch(r"OPS_[A-Z0-9_]*[A-Z0-9]", node.value):
                    names.add(node.value)
            if isinstance(node, ast.Call) and node.args:
                func = ast.unparse(node.func)
                if not re.fullmatch(r"env\.(?!read_env)\w+|os\.environ\.get|os\.getenv", func):
                    continue
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
                elif isinstance(arg, ast.JoinedStr):
                    names.add(
                        "".join(
                            re.escape(part.value) if isinstance(part, ast.Constant) else "[A-Z0-9_]+"
                            for part in arg.values
                        )
                    )
            if (
                isinstance(node, ast.Subscript)
                and ast.unparse(node.value) == "os.environ"
                and isinstance(node.slice, ast.Constant)
            ):
                names.add(node.slice.value)
    return names


def documented_variables() -> set[str]:
    """Names set (`NAME=`) or shown commented out (`# NAME=`) in .env.example."""
    return set(re.findall(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))


def test_env_example_documents_every_variable_the_console_reads():
    read = variables_the_console_reads()
    documented = documented_variables()
    assert len(read) > 30  # the scan found the settings at all
    missing = sorted(name for name in read if not any(re.fullmatch(name, doc) for doc in documented))
    assert missing == []


def test_env_example_copied_to_dotenv_gives_clean_values():
    class Example(environ.Env):
        ENVIRON: dict[str, str] = {}

    Example.read_env(ENV_EXAMPLE)  # exactly how console/settings.py reads .env
    values = Example.ENVIRON
    assert values, "nothing parsed"
    # django-environ reads `KEY=value  # note` literally: a trailing comment would become part of the value.
    assert {k: v for k, v in values.items() if v != v.strip() or re.search(r"\s#", v)} == {}
    env = Example()
    assert env.bool("DEBUG") is False
    assert env.list("OPS_TARGETS") == ["shop", "billing"]
    assert env.int("OPS_CODE_TTL_SECONDS") == 600
    assert env.str("OPS_ENVIRONMENT_COLOUR") == "#b00020"
    assert not any(name in values for name in PASSWORD_VARS)  # commented out: random passwords by default


# -------------------------------------------------------------- bootstrap_console
@pytest.fixture
def no_password_env(monkeypatch):
    for name in (*PASSWORD_VARS, "OPS_ADMIN_USERNAME", "OPS_APPROVER_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def bootstrap() -> str:
    out = io.StringIO()
    call_command("bootstrap_console", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_bootstrap_console_prints_random_passwords_once_and_they_log_in(no_password_env):
    first = bootstrap()

    passwords = dict(re.findall(r"Created \w+ '(\w+)', password: (\S+)", first))
    assert passwords.keys() == {"admin", "approver"} and passwords["admin"] != passwords["approver"]
    User = get_user_model()
    admin, approver = User.objects.get(username="admin"), User.objects.get(username="approver")
    assert admin.is_superuser and admin.check_password(passwords["admin"])
    assert not approver.is_superuser and approver.is_staff and approver.check_password(passwords["approver"])
    assert list(approver.groups.values_list("name", flat=True)) == ["approvers"]
    assert "not shown again" in first

    second = bootstrap()
    assert "Account 'admin' exists; password unchanged." in second
    assert not any(password in second for password in passwords.values())
    admin.refresh_from_db()
    assert admin.check_password(passwords["admin"])


@pytest.mark.django_db
def test_bootstrap_console_uses_passwords_from_the_environment_without_printing_them(no_password_env):
    no_password_env.setenv("OPS_ADMIN_PASSWORD", "Adm1n-from-env-pw")
    no_password_env.setenv("OPS_APPROVER_PASSWORD", "Appr0ver-from-env-pw")

    out = bootstrap()

    assert "password: (from OPS_ADMIN_PASSWORD)" in out and "password: (from OPS_APPROVER_PASSWORD)" in out
    assert "from-env-pw" not in out
    User = get_user_model()
    assert User.objects.get(username="admin").check_password("Adm1n-from-env-pw")
    assert User.objects.get(username="approver").check_password("Appr0ver-from-env-pw")


# ------------------------------------------------------ the demo history, per `alembic`
def alembic_says(verb: str, *args: str) -> str:
    from alembic import command
    from alembic.config import Config

    out = io.StringIO()
    getattr(command, verb)(Config(str(REPO_ROOT / "alembic.ini"), stdout=out), *args)
    return out.getvalue()


def test_alembic_reports_one_head_carrying_both_labels_a_branch_point_and_a_merge():
    # Alembic prints the labels in set order: compare them as a set.
    head = alembic_says("heads").replace("(", " ").replace(")", " ").replace(",", " ").split()
    assert (head[0], set(head[1:])) == ("c8a1d5f3b7ad", {"payments", "reporting", "head"})
    branch_point, *children = [line.split() for line in alembic_says("branches").splitlines() if line.strip()]
    assert branch_point == ["3c9b6e0f2d14", "(branchpoint)"]
    assert sorted(children) == [["->", "4e1a8b3d7c25", "(payments)"], ["->", "6d0e7a4b1f47", "(reporting)"]]
    history = alembic_says("history")
    assert "(mergepoint)" in history and "(branchpoint)" in history
    assert history.count("->") >= 10


# ------------------------------------------------ the embedded default (SQLite)
def manage(args: list[str], var_dir: Path, *extra: str, log_level: str = "WARNING") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPS_", "DATABASE_URL", "DJANGO_SETTINGS"))}
    env.update({"OPS_IGNORE_DOTENV": "1", "DEBUG": "1", "OPS_VAR_DIR": str(var_dir), "LOG_LEVEL": log_level})
    return subprocess.run(
        [sys.executable, "manage.py", *args, *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_the_embedded_sqlite_audit_table_is_append_only_and_its_chain_verifies(tmp_path):
    assert manage(["migrate", "--noinput"], tmp_path).returncode == 0
    append = (
        "from opsapp.services.audit.log import append_event; from opsapp.services.actors import Actor\n"
        "for i in range(3): append_event(action='heads_changed', outcome='info', actor=Actor.cli('t'), message=str(i))"
    )
    result = manage(["shell", "-c", append], tmp_path)
    assert result.returncode == 0, result.stderr

    db = sqlite3.connect(tmp_path / "console.sqlite3")
    for sql, verb in [
        ("UPDATE opsapp_auditevent SET message = 'rewritten' WHERE seq = 2", "UPDATE"),
        ("DELETE FROM opsapp_auditevent WHERE seq = 2", "DELETE"),
        ("DELETE FROM opsapp_auditevent", "DELETE"),
    ]:
        with pytest.raises(sqlite3.DatabaseError, match=f"opsapp_auditevent is append-only: {verb} is not allowed"):
            db.execute(sql)
    assert db.execute("SELECT seq, message FROM opsapp_auditevent ORDER BY seq").fetchall() == [
        (1, "0"),
        (2, "1"),
        (3, "2"),
    ]
    db.close()

    result = manage(["verify_audit_log", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


# ------------------------------------------------ --json: stdout is the JSON, Alembic's INFO needs -v 2
@pytest.mark.slow
def test_json_output_is_clean_and_alembic_info_lines_appear_on_stderr_only_with_verbosity_2(tmp_path):
    assert manage(["migrate", "--noinput"], tmp_path).returncode == 0
    for args in (["seed_demo", "--json"], ["sync_revisions", "--json", "--force"], ["show_revisions", "--json"]):
        quiet = manage(args, tmp_path, log_level="INFO")
        assert quiet.returncode == 0, quiet.stderr
        json.loads(quiet.stdout)
        assert "alembic" not in quiet.stderr, args

        chatty = manage(args, tmp_path, "-v", "2", log_level="INFO")
        assert chatty.returncode == 0, chatty.stderr
        json.loads(chatty.stdout)
        if args[0] == "seed_demo":
            # seed_demo runs Alembic; the syncs read alembic_version with the bare driver (no Alembic log).
            assert "INFO alembic.runtime.migration Context impl SQLiteImpl." in chatty.stderr, args


# ------------------------------------------------ a fresh checkout, as a newcomer has it
def newcomer_env() -> dict[str, str]:
    """A newcomer's shell: none of the suite's settings (DEBUG, database, var dir, settings module)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPS_", "DJANGO_"))
        and key not in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "EMAIL_URL", "LOG_LEVEL", "ALLOWED_HOSTS")
    }


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the work tree as git sees it (tracked and new files; nothing ignored: no .env, no var/)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    )
    root = tmp_path / "checkout"
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO_ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
    return root


def make(checkout: Path, *targets: str) -> subprocess.CompletedProcess:
    # -o install: the suite's interpreter has the requirements already; no virtualenv is built in the copy.
    return subprocess.run(
        ["make", "-o", "install", f"PY={sys.executable}", *targets],
        cwd=checkout,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_as_printed(checkout: Path, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    assert argv[:2] == ["python", "manage.py"]
    return subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=checkout,
        env=newcomer_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def readme_commands(after: str) -> list[list[str]]:
    """The `python manage.py ...` lines of the first sh block after the line `after`, split as a shell would."""
    block = README.read_text().split(after, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("python manage.py")]


def dotenv_values(path: Path) -> dict[str, str]:
    class DotEnv(environ.Env):
        ENVIRON: dict[str, str] = {}

    DotEnv.read_env(path)  # exactly how console/settings.py reads .env
    return DotEnv.ENVIRON


def test_make_run_writes_a_development_env_once_with_a_fresh_random_secret_key(checkout):
    dotenv = checkout / ".env"

    wrote = make(checkout, ".env")

    assert wrote.returncode == 0, wrote.stderr
    values = dotenv_values(dotenv)
    assert values["DEBUG"] == "1" and values["EMAIL_URL"] == "consolemail://"
    key = values["SECRET_KEY"]
    assert len(key) >= 50 and key not in wrote.stdout + wrote.stderr
    assert dotenv.stat().st_mode & 0o077 == 0  # readable by its owner only
    first = dotenv.read_text()
    assert make(checkout, ".env").returncode == 0
    assert dotenv.read_text() == first  # an existing .env is never rewritten
    dotenv.unlink()
    assert make(checkout, ".env").returncode == 0
    assert dotenv_values(dotenv)["SECRET_KEY"] != key
    # git ignores it: the key is never committed.
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT).returncode == 0


@pytest.mark.slow
def test_the_readme_command_lines_work_as_printed_after_make_run(checkout):
    setup = make(checkout, "setup")  # `make run` without the server
    assert setup.returncode == 0, setup.stdout + setup.stderr

    listed = run_as_printed(checkout, ["python", "manage.py", "help"])
    assert "[opsapp]" in listed.stdout and "request_rollback" in listed.stdout, listed.stderr
    take, request, execute = readme_commands("From the command line:")

    snapshot = run_as_printed(checkout, take)
    assert snapshot.returncode == 0, snapshot.stderr
    assert json.loads(snapshot.stdout)["status"] == "verified"
    requested = run_as_printed(checkout, request)
    assert requested.returncode == 0, requested.stderr
    assert json.loads(requested.stdout)["status"] == "pending"
    # The demo mode named in .env prints the approver's mail (on stderr: stdout is the JSON).
    code = re.search(r"^Code: (\d+)$", requested.stderr, flags=re.M).group(1)
    executed = run_as_printed(checkout, execute, stdin=code + "\n")
    assert executed.returncode == 0, executed.stderr
    assert json.loads(executed.stdout)["status"] == "succeeded"
    assert json.loads(executed.stdout)["heads"] == [request[request.index("--to") + 1]]


@pytest.mark.django_db
def test_a_second_bootstrap_asks_nobody_to_write_down_passwords_it_did_not_print(no_password_env):
    bootstrap()

    second = bootstrap()

    assert "Write the passwords above down" not in second
    assert "--reset-password USER" in second


@pytest.mark.django_db
def test_reset_password_prints_a_new_password_once_and_audits_the_reset(no_password_env):
    from opsapp.models import AuditAction, AuditEvent

    bootstrap()
    out = io.StringIO()

    call_command("bootstrap_console", "--reset-password", "approver", stdout=out)

    password = re.search(r"New password for 'approver': (\S+)", out.getvalue()).group(1)
    assert get_user_model().objects.get(username="approver").check_password(password)
    event = AuditEvent.objects.get(action=AuditAction.PASSWORD_RESET)
    assert event.actor.startswith("cli:") and event.detail["user"] == "approver"
    assert password not in event.message and password not in json.dumps(event.detail)


@pytest.mark.django_db
def test_reset_password_refuses_an_unknown_account_as_bad_usage(no_password_env):
    from opsapp.models import AuditEvent

    with pytest.raises(CommandError) as excinfo:
        call_command("bootstrap_console", "--reset-password", "nobody", stdout=io.StringIO())

    assert excinfo.value.returncode == 2 and "No account 'nobody'" in str(excinfo.value)
    assert not AuditEvent.objects.exists()


@pytest.mark.slow
def test_make_run_starts_the_server_and_one_worker_and_ctrl_c_ends_both(checkout):
    import signal
    import socket
    import time
    import urllib.request

    setup = make(checkout, "setup")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A terminal's Ctrl-C reaches the whole foreground process group: start it in a group of its own.
    proc = subprocess.Popen(
        ["make", "-o", "install", "-o", "setup", f"PY={sys.executable}", f"PORT={port}", "run"],
        cwd=checkout,
        env=newcomer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2) as page:
                    assert page.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.3)
        children = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "manage.py"], capture_output=True, text=True)
        commands = [
            subprocess.run(["ps", "-o", "args=", "-p", pid], capture_output=True, text=True).stdout
            for pid in children.stdout.split()
        ]
        assert any("db_worker" in c for c in commands) and any("runserver" in c for c in commands), commands
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], "server or worker still running after Ctrl-C"
