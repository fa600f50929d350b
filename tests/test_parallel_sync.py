"""sync_revisions --all --jobs N: a down and a slow target are recorded unreachable without holding up the rest."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from opsapp.models import Target, TargetState
from tests.conftest import pg_query

# Threads use their own connections: they must see committed rows.
pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 4


@pytest.fixture(autouse=True)
def _only_our_targets(settings):
    settings.OPS_TARGETS = {}
    settings.OPS_CONNECT_TIMEOUT_SECONDS = TIMEOUT
    settings.OPS_READ_TIMEOUT_SECONDS = TIMEOUT


@pytest.fixture
def scripts(script_dir_factory):
    sd = script_dir_factory()
    sd.add("l1", None, message="one")
    sd.add("l2", "l1", message="two")
    return sd


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word (a hung database host)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connection refused
    return port


@pytest.fixture
def locked_target_url(pg_database_factory) -> Iterator[str]:
    """A database whose alembic_version is held ACCESS EXCLUSIVE by another session (a migration mid-way)."""
    url = pg_database_factory()
    pg_query(url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    pg_query(url, "INSERT INTO alembic_version VALUES ('l1')")
    holder = psycopg.connect(url)
    holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
    yield url
    holder.rollback()
    holder.close()


def run(name: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=io.StringIO())
    except CommandError as exc:
        return exc.returncode, out.getvalue() + "\n" + str(exc)
    return 0, out.getvalue()


def django_connections() -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cur.fetchone()[0]


def test_a_down_and_a_slow_target_do_not_delay_the_rest(
    scripts, pg_database_factory, configure_target, silent_server, locked_target_url
):
    # The slow ones first, so they take workers before the healthy ones are queued.
    configure_target("a_silent", f"postgresql://postgres@127.0.0.1:{silent_server}/x", scripts.ini)
    configure_target("b_locked", locked_target_url, scripts.ini)
    configure_target("c_down", f"postgresql://postgres:s3cret@127.0.0.1:{closed_port()}/x", scripts.ini)
    healthy = [configure_target(f"ok{i}", pg_database_factory(), scripts.ini) for i in range(4)]
    before = django_connections()

    started = time.monotonic()
    started_at = timezone.now()
    code, out = run("sync_revisions", "--all", "--jobs", "4", "--json")
    elapsed = time.monotonic() - started

    assert code == 1
    payload = json.loads(out.split("\n")[0])
    by_name = {row["target"]: row for row in payload}
    assert [row["target"] for row in payload] == ["a_silent", "b_locked", "c_down", *healthy]
    assert {name: by_name[name]["state"] for name in ("a_silent", "b_locked", "c_down")} == dict.fromkeys(
        ("a_silent", "b_locked", "c_down"), "unreachable"
    )
    assert "timeout" in by_name["a_silent"]["detail"]
    assert "cannot read alembic_version: canceling statement due to" in by_name["b_locked"]["detail"]
    assert "timeout" in by_name["b_locked"]["detail"]
    assert "refused" in by_name["c_down"]["detail"] and "s3cret" not in out
    assert "sync incomplete for: a_silent, b_locked, c_down" in out
    # Recorded, not just printed.
    assert set(Target.objects.filter(state=TargetState.UNREACHABLE).values_list("name", flat=True)) == {
        "a_silent",
        "b_locked",
        "c_down",
    }
    # Neither delays the rest: every healthy target was synced before the first timeout could fire...
    for target in Target.objects.filter(name__in=healthy):
        assert target.state == TargetState.EMPTY
        assert target.last_synced_at - started_at < timedelta(seconds=TIMEOUT), target.name
    # ...and the two slow ones waited side by side (one after the other would take 2 x TIMEOUT).
    assert elapsed < 2 * TIMEOUT
    # The pool threads closed their Django connections.
    assert django_connections() == before


def test_check_drift_all_runs_in_parallel_too(scripts, pg_database_factory, configure_target):
    names = [configure_target(f"t{i}", pg_database_factory(), scripts.ini) for i in range(3)]
    code, out = run("check_drift", "--all", "--jobs", "3", "--json")
    assert code == 0
    assert [row["target"] for row in json.loads(out)] == names


@pytest.mark.parametrize(
    ("args", "words"),
    [(("--jobs", "0"), "--jobs must be at least 1"), (("--all", "--target", "x"), "not allowed with argument")],
)
def test_bad_fleet_options_are_usage_errors(args, words):
    code, out = run("sync_revisions", *args)
    assert code in (1, 2) if "not allowed" in words else code == 2
    assert words in out
