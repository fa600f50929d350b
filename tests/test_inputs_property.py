"""Property: no generated revision expression or query parameter gets a 500, a traceback or a changed target.

Hypothesis throws expressions (well-formed, malformed, control characters,
NUL, odd unicode) at the planner, the commands and the admin. Deterministic
(`derandomize=True`, no deadline) and bounded; every example of one property
reuses the same real target database (rbt: r1 -> r2 -> r3 with data), whose
heads, schema and row counts must never move.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opsapp.services.catalog.planner import DowngradePlan, plan_downgrade
from opsapp.services.errors import RevisionResolutionError
from tests.conftest import create_pg_database, drop_pg_database
from tests.rollback_fixtures import build_rollback_env

pytestmark = pytest.mark.django_db

TOKENS = [
    "r1", "r2", "r3", "base", "head", "heads", "current", "-1", "-3", "+1", "-0", "@", "@@",
    "payments", "r", "%", ":", "..", "\x00", " ", "\t", "é", "\u202e", "-99999999999999999999",
]  # fmt: skip
_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x17F), max_size=8)
_piece = st.one_of(st.sampled_from(TOKENS), _text)
EXPRESSIONS = st.one_of(
    _piece,
    st.builds(lambda a, sep, b: f"{a}{sep}{b}", _piece, st.sampled_from(["@", "@@", "-", "+", ":", "@-", " "]), _piece),
    st.builds(lambda a, n: f"{a}{n:+d}", st.sampled_from(TOKENS), st.integers(-5, 5)),
)
CHANGELISTS = ["target", "revision", "snapshot", "rollbackrequest", "auditevent"]
PARAMS = [
    "q", "o", "p", "target_name", "actor", "action__exact", "outcome__exact", "status__exact", "applied",
    "branch_label", "target__id__exact", "created_at__year", "created_at__month", "started_at__year", "seq__gte",
]  # fmt: skip
QUERY = st.dictionaries(st.one_of(st.sampled_from(PARAMS), _text), st.one_of(_piece, EXPRESSIONS), max_size=3)


def _settings(examples: int):
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        # One target database for every example is the point: it must not move.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture
def target_env(script_dir_factory, configure_target, snapshot_dir, operator, approver):
    url = create_pg_database("ops_inputs")
    try:
        yield build_rollback_env("rbt", url, script_dir_factory(url), configure_target)
    finally:
        drop_pg_database(url)


def test_the_planner_answers_every_expression_with_a_plan_or_a_refusal(target_env):
    before = target_env.state()

    @_settings(400)
    @given(EXPRESSIONS)
    @example("@")
    @example("@@")
    @example("payments@")
    @example("@abc")
    @example("r\x001")
    def check(expression: str) -> None:
        try:
            plan = plan_downgrade("rbt", expression, ["r3"])
        except RevisionResolutionError as exc:
            assert str(exc).strip() and "\x00" not in str(exc)
        else:
            assert isinstance(plan, DowngradePlan) and plan.steps
        with pytest.raises(RevisionResolutionError):
            plan_downgrade("rbt", expression, ["r1", "r3"])  # overlapping rows: always refused

    check()
    assert target_env.state() == before


def _run(name: str, **options) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command(name, stdout=out, stderr=err, **options)
    except CommandError as exc:
        assert str(exc).strip(), name
    return out.getvalue(), err.getvalue()


def test_the_commands_answer_every_expression_and_parameter_without_a_traceback(target_env):
    before = target_env.state()

    @_settings(30)
    @given(EXPRESSIONS, _piece)
    @example("@", "rbt\x00")
    @example("payments@", "rbt")
    @example("@abc", "\x00")
    def check(expression: str, name: str) -> None:
        outputs = [
            *_run("request_rollback", target="rbt", to=expression, reason="property", actor="olga", json=True),
            *_run("request_rollback", target=name, to=expression, reason="property", actor="olga"),
            *_run("export_audit_log", fmt="jsonl", target=name),
            *_run("export_audit_log", fmt="csv", since=name),
            *_run("show_revisions", target=name, no_sync=True),
            *_run("check_drift", target=name),
        ]
        assert not any("Traceback" in text for text in outputs)
        assert target_env.state() == before

    check()


def test_the_admin_answers_every_expression_and_query_without_a_500(target_env, client, operator, admin_user):
    before = target_env.state()
    client.raise_request_exception = False
    add_url = reverse("admin:opsapp_rollbackrequest_add")

    @_settings(25)
    @given(EXPRESSIONS, st.sampled_from(CHANGELISTS), QUERY, st.sampled_from(["csv", "jsonl"]))
    @example("@@", "auditevent", {"q": "\x00"}, "csv")
    @example("@", "revision", {"branch_label": "a\x00"}, "jsonl")
    @example("payments@", "rollbackrequest", {"status__exact": "x\x00"}, "csv")
    def check(expression: str, changelist: str, query: dict[str, str], fmt: str) -> None:
        client.force_login(operator)
        responses = [
            client.post(add_url, {"target": "rbt", "to": expression, "reason": "property"}),
            client.get(add_url, {"target": expression, "to": expression}),
        ]
        client.force_login(admin_user)
        responses.append(client.get(reverse(f"admin:opsapp_{changelist}_changelist"), query))
        export = reverse("admin:opsapp_auditevent_export", args=[fmt])
        responses.append(client.post(export + "?" + _urlencode(query)))
        for response in responses:
            assert response.status_code < 500, (expression, query, response.status_code)
            if not getattr(response, "streaming", False):
                assert b"Traceback" not in response.content
        assert target_env.state() == before

    check()


def _urlencode(query: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(query)
