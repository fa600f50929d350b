"""Branch-aware downgrade planning: resolution like Alembic, steps in Alembic's order, clear refusals."""

from __future__ import annotations

import io
import logging
import re

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from opsapp.models import Revision, Target
from opsapp.services.catalog.planner import plan_downgrade, revision_map_from_rows
from opsapp.services.catalog.sync import read_current_heads, sync_target
from opsapp.services.errors import RevisionResolutionError
from opsapp.targets import get_target
from tests.conftest import pg_query
from tests.histories import generate_history, run_alembic

pytestmark = pytest.mark.django_db
RUNNING = re.compile(r"-- Running downgrade (.+?) -> ")


@pytest.fixture(autouse=True)
def _only_our_targets(settings):
    settings.OPS_TARGETS = {}


@pytest.fixture
def branchy(branchy_scripts, pg_url, configure_target) -> str:
    name = configure_target("branchy", pg_url, branchy_scripts.ini)
    sync_target(name)
    return name


def offline_downgrade_order(ini, url: str, range_: str) -> list[str]:
    """What `alembic downgrade <range> --sql` actually emits, as the list of reverted revisions."""
    buffer = io.StringIO()
    config = Config(str(ini), output_buffer=buffer, stdout=io.StringIO())
    config.set_main_option("sqlalchemy.url", url.replace("postgresql://", "postgresql+psycopg://"))
    command.downgrade(config, range_, sql=True)
    return [m.split(",")[0].strip() for m in RUNNING.findall(buffer.getvalue())]


# ------------------------------------------------------------- resolution
@pytest.mark.parametrize(
    ("to", "expected_to"),
    [("b2", "b2"), ("c3", "c3"), ("a1", "a1"), ("base", "base")],
)
def test_its_steps_are_the_order_alembic_emits_them(branchy, branchy_scripts, pg_url, to, expected_to):
    plan = plan_downgrade(branchy, to, ["h8"])

    assert plan.to_revision == expected_to and plan.from_heads == ["h8"] and plan.to_input == to
    assert plan.steps == offline_downgrade_order(branchy_scripts.ini, pg_url, f"h8:{to}")


def test_its_steps_match_a_real_downgrade_from_two_heads(branchy, caplog):
    run_alembic(branchy, "upgrade", "heads")
    plan = plan_downgrade(branchy, "base", read_current_heads(get_target(branchy)))
    assert plan.from_heads == ["h8", "x1"]

    with caplog.at_level(logging.INFO, logger="alembic.runtime.migration"):
        run_alembic(branchy, "downgrade", "base")

    ran = [
        m.split(" -> ")[0].removeprefix("Running downgrade ").split(",")[0]
        for m in caplog.messages
        if m.startswith("Running downgrade")
    ]
    assert plan.steps == ran
    assert set(plan.steps) == {"a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8", "x1"}


def test_it_agrees_with_alembic_on_a_generated_history_with_merges(script_dir_factory, pg_url, configure_target):
    sd = script_dir_factory()
    ids = generate_history(sd, 400, merges=12, seed=3)
    name = configure_target("gen", pg_url, sd.ini)
    head = sync_target(name).script_heads[0]

    for to in (ids[100], ids[250], "base"):
        plan = plan_downgrade(name, to, [head])
        assert plan.steps == offline_downgrade_order(sd.ini, pg_url, f"{head}:{to}")
    live = ScriptDirectory.from_config(Config(str(sd.ini))).revision_map
    assert plan_downgrade(name, ids[100], [head], revision_map=live) == plan_downgrade(name, ids[100], [head])


def test_it_resolves_prefixes_branches_and_relative_steps(branchy):
    assert plan_downgrade(branchy, "left@c3", ["h8"]).to_revision == "c3"
    plan = plan_downgrade(branchy, "-2", ["d4"])
    assert (plan.to_revision, plan.steps) == ("b2", ["d4", "c3"])
    assert plan_downgrade(branchy, "left@-1", ["h8", "x1"]).steps == ["h8"]
    assert plan_downgrade(branchy, "other@base", ["h8", "x1"]).steps == ["x1"]
    assert plan_downgrade(branchy, "  c3 ", ["h8"]).to_revision == "c3"


def test_it_resolves_a_unique_prefix_to_the_full_id(script_dir_factory, pg_url, configure_target):
    sd = script_dir_factory()
    sd.add("abc123def456", None)
    sd.add("abc199990000", "abc123def456")
    sd.add("ffe012345678", "abc199990000")
    name = configure_target("prefix", pg_url, sd.ini)
    sync_target(name)

    plan = plan_downgrade(name, "abc12", ["ffe012345678"])
    assert (plan.to_revision, plan.steps) == ("abc123def456", ["ffe012345678", "abc199990000"])
    with pytest.raises(RevisionResolutionError) as exc:
        plan_downgrade(name, "abc1", ["ffe012345678"])
    assert (
        str(exc.value)
        == "Revision prefix 'abc1' is ambiguous: it matches abc123def456, abc199990000. Give more characters."
    )
    assert exc.value.candidates == ["abc123def456", "abc199990000"]


def test_the_revision_map_from_rows_needs_no_migration_file(branchy, branchy_scripts):
    for path in branchy_scripts.versions.glob("*.py"):
        path.unlink()
    rmap = revision_map_from_rows(Target.objects.get(name=branchy))
    assert sorted(rmap.heads) == ["h8", "x1"]
    assert plan_downgrade(branchy, "b2", ["h8"]).steps == ["h8", "g7", "d4", "f6", "e5", "c3"]


# ---------------------------------------------------------------- refusals
REFUSALS = [
    ("h8", "zzzz", "Unknown revision 'zzzz': No such revision or branch 'zzzz'."),
    ("g7", "-1", "The relative step '-1' is ambiguous: walking down from g7 reaches a merge point"),
    ("heads", "-1", "The relative step '-1' is ambiguous: the database has several heads (h8, x1)"),
    ("d4", "f6", "Revision 'f6' is not below the current heads (d4)"),
    ("d4", "h8", "Revision 'h8' is not below the current heads (d4)"),
    ("c3", "e5", "Revision 'e5' is not below the current heads (c3)"),
    ("heads", "h8", "Nothing to downgrade: going to h8 from h8, x1 reverts no revision (it is a current head)."),
    ("d4", "-9", "The relative step '-9' goes below the base of the history from d4."),
    ("d4", "+1", "'+1' moves up the history"),
    ("d4", " ", "No downgrade target given"),
    ("h8", "heads", "'heads' names several heads (h8, x1)"),
    ("heads", "lfet@base", "Unknown revision 'lfet@base': No such revision or branch 'lfet'."),
    ("heads", "lfet@head", "Unknown revision 'lfet@head': No such revision or branch 'lfet'."),
]


@pytest.mark.parametrize(
    ("db_at", "to", "message"), REFUSALS, ids=[f"{db}-{to.strip() or 'blank'}" for db, to, _ in REFUSALS]
)
def test_it_refuses_with_a_message_naming_the_revision_and_changes_nothing(branchy, pg_url, db_at, to, message):
    run_alembic(branchy, "upgrade", db_at)
    heads = read_current_heads(get_target(branchy))
    before_rows = list(Revision.objects.filter(catalog__targets__name=branchy).order_by("revision").values())

    with pytest.raises(RevisionResolutionError) as exc:
        plan_downgrade(branchy, to, heads)

    assert message in str(exc.value)
    assert exc.value.target == branchy
    assert read_current_heads(get_target(branchy)) == heads
    assert pg_query(pg_url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'items'") == [(1,)]
    assert list(Revision.objects.filter(catalog__targets__name=branchy).order_by("revision").values()) == before_rows


def test_it_refuses_a_database_holding_an_unknown_revision(branchy):
    with pytest.raises(
        RevisionResolutionError, match="revision\\(s\\) deadbeef0001 that the scripts do not know"
    ) as exc:
        plan_downgrade(branchy, "base", ["deadbeef0001"])
    assert exc.value.revision == "deadbeef0001"


def test_it_refuses_an_empty_database_and_an_unsynced_target(branchy, configure_target, pg_url, branchy_scripts):
    with pytest.raises(RevisionResolutionError, match="Nothing to downgrade: target 'branchy' has no applied revision"):
        plan_downgrade(branchy, "base", [])
    configure_target("fresh", pg_url, branchy_scripts.ini)
    with pytest.raises(RevisionResolutionError, match="'fresh' has no synced catalog: run sync_revisions first"):
        plan_downgrade("fresh", "base", ["h8"])


def test_the_revision_map_is_reused_until_a_sync_changes_the_catalog(script_dir_factory, pg_url, configure_target):
    sd = script_dir_factory()
    sd.add("p1", None)
    sd.add("p2", "p1")
    name = configure_target("cached", pg_url, sd.ini)
    target = sync_target(name)
    first = revision_map_from_rows(target)
    assert revision_map_from_rows(Target.objects.get(name=name)) is first  # no rebuild per page view

    sd.add("p3", "p2")
    target = sync_target(name)
    fresh = revision_map_from_rows(target)
    assert fresh is not first and fresh.get_revision("p3").down_revision == "p2"
    assert plan_downgrade(name, "p1", ["p3"]).steps == ["p3", "p2"]


# ------------------------------------------------ a revision plus N steps (review of issue 11 item 5)
@pytest.mark.parametrize(
    ("db_at", "to", "expected_to"), [("d4", "a1+1", "b2"), ("h8", "c3+1", "d4"), ("d4", "b2+0", "b2")]
)
def test_a_revision_plus_steps_below_the_heads_resolves_as_alembic_does(
    branchy, branchy_scripts, pg_url, db_at, to, expected_to
):
    """`alembic downgrade a1+1` is valid: a1 and one step up, i.e. b2. Only a bare `+N` (from the heads) moves up."""
    plan = plan_downgrade(branchy, to, [db_at])

    assert plan.to_revision == expected_to
    assert plan.steps == offline_downgrade_order(branchy_scripts.ini, pg_url, f"{db_at}:{to}")


def test_a_revision_plus_steps_above_the_heads_is_refused(branchy):
    with pytest.raises(RevisionResolutionError, match="Revision .c3\\+1. is not below the current heads \\(c3\\)"):
        plan_downgrade(branchy, "c3+1", ["c3"])


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("b2+1", "The relative step 'b2+1' is ambiguous: walking up from b2 reaches a merge point"),
        ("h8+1", "The relative step 'h8+1' goes above the top of the history from h8."),
    ],
)
def test_a_revision_plus_steps_that_cannot_walk_up_says_so(branchy, to, message):
    with pytest.raises(RevisionResolutionError) as exc:
        plan_downgrade(branchy, to, ["h8"])
    assert message in str(exc.value)
