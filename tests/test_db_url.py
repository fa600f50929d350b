"""parse_url reads every URL form the way SQLAlchemy's make_url does (start-up without SQLAlchemy)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from opsapp.services.db_url import UrlError, parse_url

URLS = [
    "postgresql://u:p@h:5432/db",
    "postgresql+psycopg://u:p%40ss@h/db?sslmode=require&application_name=x",
    "postgres://u@h/db",
    "postgresql://u:p@ss@h/db",
    "postgresql://[::1]:5433/db",
    "postgresql:///db?host=/var/run/postgresql",
    "postgresql://h/db?a=1&a=2",
    "postgresql://h:abc/db",
    "postgresql://h:/db",
    "postgresql://h",
    "sqlite:///relative.db",
    "sqlite:////abs/path.db",
    "sqlite://",
    "sqlite:///file:x.db?mode=ro&uri=true",
    "mysql://u@h/db",
    "not a url",
    "postgresql://u:p w@h/db",
]


@pytest.mark.parametrize("text", URLS)
def test_it_reads_a_url_as_sqlalchemy_does(text):
    try:
        expected = make_url(text)
    except Exception:  # noqa: BLE001 - SQLAlchemy refuses it: so must we
        with pytest.raises(UrlError):
            parse_url(text)
        return
    got = parse_url(text)
    assert got.drivername == expected.drivername
    assert got.get_backend_name() == expected.get_backend_name()
    assert (got.username, got.password, got.host, got.port, got.database) == (
        expected.username,
        expected.password,
        expected.host,
        expected.port,
        expected.database,
    )
    assert {k: (tuple(v) if not isinstance(v, str) else v) for k, v in expected.query.items()} == got.query
