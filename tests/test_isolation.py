"""The serialization-retry helper, and the seed's transfer_funds proven on the demo accounts."""

from __future__ import annotations

import random
import threading
from decimal import Decimal

import pytest
import sqlalchemy as sa
from conftest import pg_query, repo_path

from opsapp.demo.seed import seed_demo
from opsapp.demo.transfer import InsufficientFunds, transfer_funds
from opsapp.services.isolation import run_serializable, sqlstate_of

RAISE_40001 = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"


def _engine(url: str, **kwargs) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), **kwargs)


def test_it_retries_a_serialization_failure_a_bounded_number_of_times(pg_url):
    engine = _engine(pg_url, poolclass=sa.pool.NullPool)
    attempts: list[int] = []
    retries_seen: list[tuple[int, str]] = []

    def always_conflicts(conn: sa.Connection) -> None:
        attempts.append(1)
        conn.exec_driver_sql(RAISE_40001)

    with pytest.raises(sa.exc.DBAPIError) as failed:
        run_serializable(
            engine.connect,
            always_conflicts,
            retries=3,
            on_retry=lambda n, exc: retries_seen.append((n, sqlstate_of(exc))),
            base_delay=0.001,
        )
    assert sqlstate_of(failed.value) == "40001"
    assert len(attempts) == 4 and retries_seen == [(1, "40001"), (2, "40001"), (3, "40001")]


def test_it_commits_once_the_conflict_is_gone_and_never_retries_other_errors(pg_url):
    engine = _engine(pg_url, poolclass=sa.pool.NullPool)
    pg_query(pg_url, "CREATE TABLE t (n int)")
    calls = []

    def flaky(conn: sa.Connection) -> str:
        calls.append(1)
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        if len(calls) == 1:
            conn.exec_driver_sql(RAISE_40001)
        return "done"

    assert run_serializable(engine.connect, flaky, retries=2, base_delay=0.001) == "done"
    assert pg_query(pg_url, "SELECT count(*) FROM t") == [(1,)]  # the failed attempt left nothing

    def broken(conn: sa.Connection) -> None:
        calls.append(1)
        conn.exec_driver_sql("SELECT * FROM no_such_table")

    calls.clear()
    with pytest.raises(sa.exc.ProgrammingError):
        run_serializable(engine.connect, broken, retries=5, base_delay=0.001)
    assert len(calls) == 1


@pytest.fixture
def demo_accounts(pg_url, configure_target, db) -> sa.Engine:
    """The real demo target (the repo's alembic/ history) on a throwaway PostgreSQL database, seeded."""
    configure_target("demo", pg_url, repo_path("alembic.ini"))
    seed_demo("demo")
    engine = _engine(pg_url, pool_size=10, max_overflow=0)
    yield engine
    engine.dispose()


def _balances(engine: sa.Engine) -> dict[int, Decimal]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT id, balance FROM accounts")).all())


def test_the_seed_transfer_refuses_to_overdraw_and_moves_nothing(demo_accounts):
    before = _balances(demo_accounts)
    poorest = min(before, key=before.get)
    other = next(i for i in before if i != poorest)
    with pytest.raises(InsufficientFunds):
        transfer_funds(demo_accounts, poorest, other, before[poorest] + 1)
    assert _balances(demo_accounts) == before


def test_many_concurrent_serializable_transfers_keep_the_total_exact_and_never_go_negative(demo_accounts):
    before = _balances(demo_accounts)
    total = sum(before.values())
    hot = sorted(before)[:4]  # few accounts, many writers: conflicts are certain
    threads, per_thread, limit = 8, 20, 30
    retries: list[int] = []
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(per_thread):
            a, b = rng.sample(hot, 2)
            amount = Decimal(rng.randrange(1, 200_000)) / 100
            seen: list[int] = []
            try:
                transfer_funds(
                    demo_accounts, a, b, amount, retries=limit, on_retry=lambda n, e, seen=seen: seen.append(n)
                )
                outcome = "moved"
            except InsufficientFunds:
                outcome = "refused"
            except sa.exc.DBAPIError as exc:  # retries exhausted: nothing moved
                assert sqlstate_of(exc) in ("40001", "40P01")
                outcome = "gave up"
            with lock:
                retries.append(len(seen))
                outcomes.append(outcome)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()

    after = _balances(demo_accounts)
    assert sum(after.values()) == total
    assert min(after.values()) >= 0
    assert len(outcomes) == threads * per_thread and "moved" in outcomes
    assert max(retries) <= limit
    assert sum(retries) > 0  # serialization failures happened and were retried
