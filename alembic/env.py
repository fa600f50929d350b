"""Alembic environment of the demo target `shop`.

Three ways to run it:

- The console passes a live connection in ``config.attributes["connection"]``
  (Alembic cookbook, "Sharing a Connection"). It is used as is: when the
  caller already opened a transaction on it, ``context.begin_transaction()``
  is a no-op and the caller commits or rolls back (so a whole downgrade is one
  PostgreSQL transaction). Nothing here commits it.
- Without a connection, an engine is built from ``OPS_TARGET_SHOP_URL`` or
  else the ini's ``sqlalchemy.url``. When the console built the config
  (``config.attributes["ops_console"]``) its URL wins over the environment.
- Offline ``--sql`` mode renders SQL for the same URL's dialect.

``logging.config.fileConfig`` runs only under the plain ``alembic`` CLI: the
console keeps Django's loggers.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

config = context.config

# The demo history is hand-written; there is no model metadata to compare.
target_metadata = None

_CONSOLE = bool(config.attributes.get("ops_console"))
_SHARED_CONNECTION = config.attributes.get("connection")

if config.config_file_name is not None and _SHARED_CONNECTION is None and not _CONSOLE:
    fileConfig(config.config_file_name)


def _database_url() -> str:
    """The URL to use when no connection is passed in, psycopg 3 made explicit."""
    url = None if _CONSOLE else os.environ.get("OPS_TARGET_SHOP_URL")
    url = url or config.get_main_option("sqlalchemy.url") or ""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return url


def _configure_kwargs(dialect_name: str) -> dict:
    return {
        "target_metadata": target_metadata,
        # Only affects autogenerate; the hand-written revisions avoid table
        # rebuilds so they also render in --sql mode on SQLite.
        "render_as_batch": dialect_name == "sqlite",
        "transaction_per_migration": config.attributes.get("transaction_per_migration", False),
    }


def run_migrations_offline() -> None:
    """Render SQL to the output buffer instead of running it."""
    url = _database_url()
    context.configure(
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_kwargs(url.split(":", 1)[0].split("+", 1)[0]),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **_configure_kwargs(connection.dialect.name))
    # No-op when the caller's connection is already in a transaction (the
    # caller owns it); otherwise Alembic begins and commits its own.
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    if _SHARED_CONNECTION is not None:
        _run(_SHARED_CONNECTION)
        return
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
            # SQLAlchemy 2 autobegins: a transaction Alembic did not own
            # (e.g. from reading alembic_version) must still be committed.
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
