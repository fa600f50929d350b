"""The one place that builds Alembic `Config` objects and engines for a target.

Alembic is driven through its Python API only (never the CLI). The live
connection is handed to the target's env.py in `config.attributes["connection"]`
(Alembic cookbook, "Sharing a Connection"), so the console controls the
transaction, isolation level and locks. Alembic errors are translated here.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from opsapp.services.errors import ScriptDirectoryError, TargetUnreachable
from opsapp.targets import TargetConfig, mask_url


def make_config(
    target: TargetConfig,
    *,
    connection: sa.engine.Connection | None = None,
    output_buffer: io.StringIO | None = None,
    **attributes: object,
) -> Config:
    """Build the Alembic Config for `target`.

    `connection`, when given, is used by env.py instead of opening its own.
    The target URL is passed as `sqlalchemy.url` for offline (`--sql`) mode
    and for env.py running without a connection.
    """
    config = Config(str(target.alembic_ini), output_buffer=output_buffer, stdout=output_buffer or io.StringIO())
    # ConfigParser interpolation: a '%' in a password must be doubled.
    config.set_main_option("sqlalchemy.url", target.sqlalchemy_url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    config.attributes["ops_console"] = True
    config.attributes.update(attributes)
    return config


def script_directory(target: TargetConfig) -> ScriptDirectory:
    """Load the target's ScriptDirectory; raise ScriptDirectoryError on failure."""
    try:
        return ScriptDirectory.from_config(make_config(target))
    except CommandError as exc:
        raise ScriptDirectoryError(f"Target {target.name!r}: {exc}", target=target.name) from exc


def create_engine(target: TargetConfig, *, read_timeout: bool = False, **kwargs: object) -> sa.engine.Engine:
    """An engine for the target with a bounded connect timeout and no pooling surprises.

    `read_timeout` also bounds every statement and lock wait by
    OPS_READ_TIMEOUT_SECONDS (PostgreSQL): for the plain reads of a sync,
    where a table locked by a long migration must not hold up the fleet.
    """
    from django.conf import settings

    connect_args: dict[str, object] = {}
    if target.is_postgresql:
        connect_args["connect_timeout"] = settings.OPS_CONNECT_TIMEOUT_SECONDS
        connect_args["application_name"] = "ops-console"
        if read_timeout:
            ms = max(1, int(settings.OPS_READ_TIMEOUT_SECONDS * 1000))
            connect_args["options"] = f"-c statement_timeout={ms} -c lock_timeout={ms}"
    return sa.create_engine(target.sqlalchemy_url, connect_args=connect_args, poolclass=sa.pool.NullPool, **kwargs)


def _missing_sqlite_file(target: TargetConfig) -> Path | None:
    """The target's SQLite file when it does not exist (None for PostgreSQL or an existing file)."""
    if not target.is_sqlite:
        return None
    try:
        database = sa.engine.make_url(target.sqlalchemy_url).database
    except sa.exc.ArgumentError:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    return None if path.exists() else path


_SHARED_ENGINES: dict[tuple[str, int, float], sa.engine.Engine] = {}
_SHARED_ENGINES_LOCK = threading.Lock()


def _shared_engine(target: TargetConfig) -> sa.engine.Engine:
    """One NullPool engine per target URL for plain reads (alembic_version), with read timeouts.

    Still no pooled connections to managed databases (NullPool: every read
    opens and closes its own); what is shared is the initialised dialect,
    which a fresh engine re-initialises with several round trips per connect.
    Nothing may attach event listeners to these engines.
    """
    from django.conf import settings

    key = (target.sqlalchemy_url, settings.OPS_CONNECT_TIMEOUT_SECONDS, settings.OPS_READ_TIMEOUT_SECONDS)
    with _SHARED_ENGINES_LOCK:
        engine = _SHARED_ENGINES.get(key)
        if engine is None:
            engine = _SHARED_ENGINES[key] = create_engine(target, read_timeout=True)
        return engine


@contextmanager
def connect(
    target: TargetConfig, *, create_sqlite_file: bool = False, shared: bool = False, **engine_kwargs: object
) -> Iterator[sa.engine.Connection]:
    """Open a connection to the target; TargetUnreachable (password masked) when it is down.

    A SQLite target whose file does not exist is unreachable too: SQLite would
    silently create an empty database there (a typo in the URL would then
    look like an `empty` target). Only `seed_demo` passes `create_sqlite_file`.
    """
    missing = None if create_sqlite_file else _missing_sqlite_file(target)
    if missing is not None:
        raise TargetUnreachable(
            f"Target {target.name!r} is unreachable: SQLite file {str(missing)!r} does not exist.",
            target=target.name,
        )
    if shared and engine_kwargs:
        raise ValueError("a shared engine takes no engine options")
    engine = _shared_engine(target) if shared else create_engine(target, **engine_kwargs)
    try:
        try:
            conn = engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise TargetUnreachable(
                f"Target {target.name!r} is unreachable: {mask_url(str(getattr(exc, 'orig', exc) or exc)).strip()}",
                target=target.name,
            ) from exc
        try:
            yield conn
        finally:
            conn.close()
    finally:
        if not shared:
            engine.dispose()
