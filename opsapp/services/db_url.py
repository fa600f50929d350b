"""Database URLs read the way SQLAlchemy's `make_url` reads them, without importing SQLAlchemy.

Why: importing SQLAlchemy (and Alembic with it) costs more than the rest of a
cron command's start-up; validating a target or reading its `alembic_version`
needs only the URL's parts. The pattern and the decoding are
`sqlalchemy.engine.url._parse_url`'s (tests/test_db_url.py checks both agree
on every URL form the tests know).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

_URL_RE = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
        """,
    re.X,
)


class UrlError(ValueError):
    """The text is not a database URL SQLAlchemy would accept."""


@dataclass(frozen=True)
class DbUrl:
    drivername: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    # A key given twice holds a tuple of its values, as in SQLAlchemy's URL.query.
    query: dict[str, str | tuple[str, ...]] = field(default_factory=dict)

    def get_backend_name(self) -> str:
        return self.drivername.split("+")[0]


def parse_url(text: str) -> DbUrl:
    """Parse `text` as SQLAlchemy's `make_url` would; raises UrlError where it raises."""
    match = _URL_RE.match(text)
    if match is None:
        raise UrlError("Could not parse SQLAlchemy URL from given URL string")
    parts = match.groupdict()
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in parse_qsl(parts["query"] or ""):
        old = query.get(key)
        query[key] = value if old is None else (*((old,) if isinstance(old, str) else old), value)
    port = None
    if parts["port"]:
        try:
            port = int(parts["port"])
        except ValueError:
            raise UrlError(f"invalid literal for int() with base 10: {parts['port']!r}") from None
    elif parts["port"] is not None:
        # SQLAlchemy's URL.create refuses an empty port ("host:/db").
        raise UrlError("Port argument must be an integer or None")
    return DbUrl(
        drivername=parts["name"],
        username=unquote(parts["username"]) if parts["username"] is not None else None,
        password=unquote(parts["password"]) if parts["password"] is not None else None,
        host=parts["ipv4host"] or parts["ipv6host"],
        port=port,
        database=unquote(parts["database"]) if parts["database"] is not None else None,
        query=query,
    )


def psycopg_connect_kwargs(url: DbUrl) -> dict[str, object] | None:
    """psycopg.connect() keywords for a PostgreSQL URL, as SQLAlchemy's psycopg dialect builds them;
    None for what only SQLAlchemy handles (hosts or ports in the query: its multi-host forms)."""
    if "host" in url.query or "port" in url.query or any(not isinstance(v, str) for v in url.query.values()):
        return None
    kwargs: dict[str, object] = {}
    for key, value in (
        ("host", url.host),
        ("port", url.port),
        ("user", url.username),
        ("password", url.password),
        ("dbname", url.database),
    ):
        if value:  # SQLAlchemy's translate_connect_args drops empty parts too
            kwargs[key] = value
    kwargs.update(url.query)
    return kwargs
