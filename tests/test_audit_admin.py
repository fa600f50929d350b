"""The auditor's admin: read-only audit list and detail, filters, search, export, permissions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib import admin
from django.urls import NoReverseMatch, reverse

from opsapp.admin.audit import EstimatedCountPaginator, distinct_values
from opsapp.models import AuditAction, AuditEvent, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event
from opsapp.services.audit.verify import record_verification, verify_chain

REPO_ROOT = Path(__file__).resolve().parent.parent
LIST_URL = "admin:opsapp_auditevent_changelist"


def export_url(fmt: str, query: str = "") -> str:
    return reverse("admin:opsapp_auditevent_export", args=[fmt]) + query


def add_event(actor: Actor, *, target: str = "shop", request_id: int | None = None, message: str = "did a thing", **kw):
    return append_event(
        action=kw.pop("action", AuditAction.ROLLBACK_REQUESTED),
        outcome=kw.pop("outcome", AuditOutcome.SUCCESS),
        actor=actor,
        target=target,
        request_id=request_id,
        message=message,
        **kw,
    )


@pytest.fixture
def events():
    return [
        add_event(
            Actor(username="olga", user_id=1), request_id=41, message="downgrade shop to a1", from_revision="c3d4e5"
        ),
        add_event(
            Actor.cron(), target="billing", message="heads changed", action=AuditAction.HEADS_CHANGED, outcome="info"
        ),
        add_event(Actor(username="anton", user_id=2), snapshot_id=7, message="snapshot verified", outcome="info"),
    ]


def written_body(response) -> bytes:
    return b"".join(response.streaming_content)


def every_opsapp_model_admin():
    return [model for model in admin.site._registry if model._meta.app_label == "opsapp"]


# --------------------------------------------------------------- read-only
@pytest.mark.django_db
def test_an_auditor_gets_403_on_every_add_change_and_delete_url(client, auditor, events):
    client.force_login(auditor)
    models = every_opsapp_model_admin()
    assert AuditEvent in models
    for model in models:
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        add = reverse(f"{prefix}_add")
        change = reverse(f"{prefix}_change", args=[1])
        delete = reverse(f"{prefix}_delete", args=[1])
        assert client.get(add).status_code == 403, add
        assert client.post(add, {}).status_code == 403, add
        assert client.post(change, {"message": "rewritten"}).status_code == 403, change
        assert client.get(delete).status_code == 403, delete
        assert client.post(delete, {"post": "yes"}).status_code == 403, delete
    assert AuditEvent.objects.get(seq=1).message == "downgrade shop to a1"
    assert verify_chain().ok


@pytest.mark.django_db
def test_even_a_superuser_cannot_add_change_or_bulk_delete_events(client, admin_user, events):
    client.force_login(admin_user)
    response = client.get(reverse(LIST_URL))
    assert response.status_code == 200
    assert b"action-toggle" not in response.content and b"delete_selected" not in response.content
    assert client.get(reverse("admin:opsapp_auditevent_add")).status_code == 403
    assert client.get(reverse("admin:opsapp_auditevent_delete", args=[events[0].pk])).status_code == 403
    response = client.post(reverse("admin:opsapp_auditevent_change", args=[events[0].pk]), {"message": "x"})
    assert response.status_code == 403
    assert AuditEvent.objects.count() == 3 and verify_chain().ok


@pytest.mark.django_db
def test_the_detail_page_shows_every_field_and_links_the_request_and_snapshot(client, auditor, events):
    client.force_login(auditor)
    event = AuditEvent.objects.get(seq=1)
    response = client.get(reverse("admin:opsapp_auditevent_change", args=[event.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    for value in (event.hash, event.prev_hash, "olga", "downgrade shop to a1", "c3d4e5", "rollback requested"):
        assert value in html
    assert 'name="_save"' not in html
    try:
        url = reverse("admin:opsapp_rollbackrequest_change", args=[41])
    except NoReverseMatch:
        url = None
    assert (f'href="{url}"' in html) if url else ("#41" in html)

    snapshot_event = AuditEvent.objects.get(seq=3)
    html = client.get(reverse("admin:opsapp_auditevent_change", args=[snapshot_event.pk])).content.decode()
    assert "#7" in html


# -------------------------------------------------------------- list page
@pytest.mark.django_db
def test_the_list_shows_the_last_verification_result_at_the_top(client, auditor, events):
    client.force_login(auditor)
    html = client.get(reverse(LIST_URL)).content.decode()
    assert "never been verified" in html

    record_verification(verify_chain(), actor=Actor.cron())
    html = client.get(reverse(LIST_URL)).content.decode()
    assert re.search(
        r'class="success">\s*Last verification of the hash chain .*by cron.*intact — 3 events verified', html, re.S
    )


@pytest.mark.django_db
def test_filters_and_search_narrow_the_list(client, auditor, events):
    client.force_login(auditor)
    url = reverse(LIST_URL)

    def seqs(query: dict) -> list[int]:
        response = client.get(url, query)
        assert response.status_code == 200
        return [row.seq for row in response.context["cl"].result_list]

    assert seqs({}) == [3, 2, 1]
    assert seqs({"target_name": "billing"}) == [2]
    assert seqs({"actor": "anton"}) == [3]
    assert seqs({"action__exact": AuditAction.HEADS_CHANGED}) == [2]
    assert seqs({"outcome__exact": "info"}) == [3, 2]
    assert seqs({"q": "41"}) == [1]  # request id, exact
    assert seqs({"q": "c3d4"}) == [1]  # revision
    assert seqs({"q": "verified"}) == [3]  # message
    assert distinct_values("actor") == ["anton", "cron", "olga"]
    assert distinct_values("target_name") == ["billing", "shop"]


@pytest.mark.django_db
def test_the_paginator_estimates_instead_of_counting_a_big_table(events):
    paginator = EstimatedCountPaginator(AuditEvent.objects.order_by("-seq"), 100)
    assert paginator.count == 3  # small tables are counted exactly
    assert EstimatedCountPaginator(AuditEvent.objects.filter(outcome="info"), 100).count == 2


@pytest.mark.django_db
def test_deleting_a_user_leaves_their_events_readable_with_the_username(client, auditor, django_user_model):
    leaver = django_user_model.objects.create_user("leaver", password="pw-leaver", is_staff=True)
    add_event(Actor.from_user(leaver, client_ip="10.0.0.9"), message="requested by the leaver")
    leaver.delete()

    event = AuditEvent.objects.get(message="requested by the leaver")
    assert (event.actor, event.client_ip) == ("leaver", "10.0.0.9")
    client.force_login(auditor)
    assert "leaver" in client.get(reverse(LIST_URL), {"actor": "leaver"}).content.decode()
    assert "leaver" in client.get(reverse("admin:opsapp_auditevent_change", args=[event.pk])).content.decode()
    assert verify_chain().ok


# ------------------------------------------------------------------ export
@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_auditor_exports_the_filtered_list_and_it_verifies_offline(client, auditor, events, fmt, tmp_path):
    client.force_login(auditor)
    html = client.get(reverse(LIST_URL), {"target_name": "shop"}).content.decode()
    assert f'action="{export_url(fmt, "?target_name=shop")}"' in html
    assert client.get(export_url(fmt, "?target_name=shop")).status_code == 405  # a GET writes nothing

    response = client.post(export_url(fmt, "?target_name=shop"))
    assert response.status_code == 200 and response.streaming
    assert "attachment" in response["Content-Disposition"]
    export = tmp_path / f"audit.{fmt}"
    export.write_bytes(written_body(response))

    if fmt == "jsonl":
        rows = [json.loads(line) for line in export.read_text().splitlines()]
        assert [(r["seq"], r["target_name"]) for r in rows] == [(1, "shop"), (3, "shop")]
    recorded = AuditEvent.objects.order_by("-seq").first()
    assert (recorded.action, recorded.actor, recorded.detail["filters"]) == (
        AuditAction.AUDIT_EXPORTED,
        "aude",
        {"target_name": "shop"},
    )

    text = (REPO_ROOT / "docs" / "audit.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "def verify_export" in b)
    script = tmp_path / "verify_audit_export.py"
    script.write_text(snippet)
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(export)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 events checked; last #3" in result.stdout
    assert "note: #2..#2 are not in this file" in result.stdout  # the billing event, filtered out


@pytest.mark.django_db
def test_an_operator_can_read_the_log_but_not_export_it(client, operator, events):
    client.force_login(operator)
    response = client.get(reverse(LIST_URL))
    assert response.status_code == 200
    assert b"Export CSV" not in response.content
    assert client.post(export_url("csv")).status_code == 403
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).exists()


@pytest.mark.django_db
def test_an_outsider_sees_nothing_and_an_anonymous_visitor_is_sent_to_log_in(client, outsider, events):
    client.force_login(outsider)
    assert client.get(reverse(LIST_URL)).status_code == 403
    assert client.post(export_url("jsonl")).status_code == 403
    assert client.get(reverse("admin:opsapp_auditevent_change", args=[events[0].pk])).status_code == 403
    client.logout()
    response = client.post(export_url("jsonl"))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).exists()


@pytest.mark.django_db
def test_an_unknown_export_format_or_filter_is_refused(client, auditor, events):
    client.force_login(auditor)
    assert client.post(export_url("xlsx")).status_code == 404
    assert client.post(export_url("csv", "?no_such_field=1")).status_code == 400
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).exists()


@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
def test_the_date_hierarchy_lists_the_same_periods_as_django_without_scanning_the_table(
    tz, settings, admin_client, monkeypatch
):
    """The cheap datetimes() (index probes) agrees with Django's DISTINCT DATE_TRUNC on every level."""
    from datetime import UTC, datetime

    from django.db import models as dj_models
    from django.utils import timezone

    from opsapp.models import AuditEvent
    from opsapp.models import audit as audit_models

    settings.TIME_ZONE = tz
    moments = [
        datetime(2024, 12, 31, 23, 30, tzinfo=UTC),  # New Year in UTC, still 2024 in New York
        datetime(2025, 1, 1, 4, 59, tzinfo=UTC),
        datetime(2025, 1, 1, 5, 1, tzinfo=UTC),
        datetime(2025, 3, 15, 12, 0, tzinfo=UTC),
        datetime(2025, 3, 16, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
    ]
    AuditEvent.objects.bulk_create(
        AuditEvent(seq=10_000 + i, created_at=m, actor="t", action="stamp", outcome="info", prev_hash="0", hash="0")
        for i, m in enumerate(moments)
    )
    with timezone.override(tz):
        qs = AuditEvent.objects.all()
        for kind in ("year", "month", "day"):
            assert list(qs.datetimes("created_at", kind)) == list(
                dj_models.QuerySet.datetimes(qs, "created_at", kind)
            ), kind
        march = qs.filter(created_at__year=2025, created_at__month=3)
        assert list(march.datetimes("created_at", "day")) == list(
            dj_models.QuerySet.datetimes(march, "created_at", "day")
        )
        # A filtered list (a search) reads the times of a few events at once, or probes when there are many.
        searched = qs.filter(actor__icontains="T")
        for few in (1000, 2):
            monkeypatch.setattr(audit_models, "FEW_EVENTS", few)
            for kind in ("year", "month", "day"):
                for order in ("ASC", "DESC"):
                    assert list(searched.datetimes("created_at", kind, order)) == list(
                        dj_models.QuerySet.datetimes(searched, "created_at", kind, order)
                    ), (few, kind, order)
    page = admin_client.get("/admin/opsapp/auditevent/?created_at__year=2025")
    assert page.status_code == 200 and "March 2025" in page.content.decode()
