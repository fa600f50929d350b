"""Run a unit of work in one transaction, retrying serialization failures.

Under SERIALIZABLE (or REPEATABLE READ) PostgreSQL aborts one of two
conflicting transactions with SQLSTATE 40001 (serialization_failure), and a
deadlock is reported as 40P01 (deadlock_detected). Both are safe to retry
from the start: the aborted transaction left nothing behind. Anything else is
raised at once. Retries are bounded and spaced with jittered exponential
back-off, so two colliding workers do not collide again in lockstep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

import sqlalchemy as sa

T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def sqlstate_of(exc: BaseException | None) -> str:
    """The SQLSTATE carried by `exc` or anything it wraps ("" when none).

    Looks through SQLAlchemy's DBAPIError.orig and the __cause__/__context__
    chain (Alembic and our own code re-raise `from` the driver error).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for candidate in (exc, getattr(exc, "orig", None)):
            state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
            if isinstance(state, str) and state:
                return state
        exc = exc.__cause__ or exc.__context__
    return ""


def is_retryable(exc: BaseException) -> bool:
    return sqlstate_of(exc) in RETRYABLE_SQLSTATES


def backoff_delay(attempt: int, *, base: float = 0.05, cap: float = 2.0) -> float:
    """Full-jitter exponential back-off: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def run_serializable(
    connection_factory: Callable[[], AbstractContextManager[sa.engine.Connection]],
    fn: Callable[[sa.engine.Connection], T],
    *,
    retries: int,
    on_retry: Callable[[int, BaseException], None] | None = None,
    base_delay: float = 0.05,
) -> T:
    """Run `fn(connection)` inside one transaction and commit; retry 40001/40P01.

    `connection_factory()` returns a context manager yielding a connection
    already set to the wanted isolation level (it may yield the same
    connection each time). Each attempt is `with conn.begin(): fn(conn)`: any
    exception rolls the attempt back. A retryable failure is retried at most
    `retries` times (so `retries + 1` attempts in all); `on_retry(attempt,
    exc)` is called before each retry (attempt counts from 1). The last
    failure, or any non-retryable one, propagates unchanged.
    """
    if retries < 0:
        raise ValueError("retries must be >= 0")
    attempt = 0
    while True:
        attempt += 1
        try:
            with connection_factory() as conn:
                with conn.begin():
                    return fn(conn)
        except Exception as exc:
            if not is_retryable(exc) or attempt > retries:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            time.sleep(backoff_delay(attempt, base=base_delay))
