"""The bare-driver read of alembic_version and the ini-only script locations agree with Alembic's own.

Cron commands read both without importing Alembic or SQLAlchemy (issue 18, start-up); these
tests hold them to what MigrationContext.get_current_heads() and ScriptDirectory say.
"""

from __future__ import annotations

import sqlite3

import pytest
from alembic.runtime.migration import MigrationContext

from opsapp.services.alembic_api import connect
from opsapp.services.catalog.load import _plain_locations, open_script_directory, script_locations
from opsapp.services.errors import TargetUnreachable
from opsapp.services.version_table import read_heads
from opsapp.targets import get_target
from tests.conftest import pg_query

pytestmark = pytest.mark.django_db


def alembic_heads(config) -> list[str]:
    with connect(config) as conn:
        return sorted(MigrationContext.configure(conn).get_current_heads())


@pytest.fixture
def pg_target(pg_url, configure_target, branchy_scripts) -> str:
    return configure_target("vt_pg", pg_url, branchy_scripts.ini)


def test_it_reads_no_table_one_head_and_two_heads_as_alembic_does(pg_target, pg_url):
    config = get_target(pg_target)
    assert read_heads(config) == alembic_heads(config) == []
    pg_query(pg_url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    assert read_heads(config) == alembic_heads(config) == []
    pg_query(pg_url, "INSERT INTO alembic_version VALUES ('f6'), ('d4')")
    assert read_heads(config) == alembic_heads(config) == ["d4", "f6"]


def test_an_unreachable_postgresql_target_is_reported_without_its_password(configure_target, branchy_scripts):
    name = configure_target("vt_down", "postgresql://u:s3cret@127.0.0.1:1/nowhere", branchy_scripts.ini)
    with pytest.raises(TargetUnreachable) as caught:
        read_heads(get_target(name))
    assert "s3cret" not in str(caught.value)
    assert "is unreachable" in str(caught.value)


def test_a_sqlite_target_reads_as_alembic_does_and_a_missing_file_is_unreachable(
    tmp_path, configure_target, branchy_scripts
):
    path = tmp_path / "t.db"
    name = configure_target("vt_lite", f"sqlite:///{path}", branchy_scripts.ini)
    config = get_target(name)
    with pytest.raises(TargetUnreachable, match="does not exist"):
        read_heads(config)
    assert not path.exists()
    sqlite3.connect(path).close()
    assert read_heads(config) == alembic_heads(config) == []
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('b2')")
    assert read_heads(config) == alembic_heads(config) == ["b2"]


def test_a_multi_host_url_is_left_to_sqlalchemy(configure_target, branchy_scripts):
    name = configure_target("vt_multi", "postgresql://u@/db?host=h1:5432&host=h2:5432", branchy_scripts.ini)
    assert read_heads(get_target(name)) is None


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "version_locations = %(here)s/migrations/versions %(here)s/more\npath_separator = space\n",
        "version_locations = %(here)s/migrations/versions;%(here)s/more\npath_separator = ;\n",
    ],
    ids=["default", "space", "semicolon"],
)
def test_the_script_locations_read_from_the_ini_are_alembics(extra, pg_url, configure_target, branchy_scripts):
    ini = branchy_scripts.ini
    (ini.parent / "more").mkdir(exist_ok=True)
    text = ini.read_text()
    if extra:
        ini.write_text(text.replace("[alembic]\n", "[alembic]\n" + extra, 1))
    config = get_target(configure_target("vt_loc", pg_url, ini))
    plain = _plain_locations(config)
    assert plain is not None
    sd = open_script_directory(config)
    assert plain.dir == sd.dir
    assert list(plain.version_locations) == list(sd._version_locations)
    assert script_locations(config) == plain


def test_a_legacy_separator_is_left_to_alembic(pg_url, configure_target, branchy_scripts):
    ini = branchy_scripts.ini
    ini.write_text(ini.read_text().replace("[alembic]\n", "[alembic]\nversion_locations = a, b\n", 1))
    config = get_target(configure_target("vt_legacy", pg_url, ini))
    assert _plain_locations(config) is None
