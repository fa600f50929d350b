"""A NUL byte in any changelist filter, search or export parameter answers 400, never 500.

PostgreSQL text cannot hold NUL: before the guard each of these raised
DataError. The parameter names are derived from every registered ModelAdmin
(its list_filter, search and date hierarchy), so a new filter is covered too.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin import FieldListFilter, SimpleListFilter
from django.db import models
from django.urls import reverse

from opsapp.middleware import NUL_COOKIE_REFUSAL, NUL_REFUSAL
from opsapp.models import AuditAction, AuditEvent, AuditOutcome, Target

pytestmark = pytest.mark.django_db

NUL_VALUES = ["\x00", "rbt\x00", "a\x00b"]


def _filter_parameters(model_admin: admin.ModelAdmin) -> list[str]:
    opts = model_admin.model._meta
    names: list[str] = []
    for item in model_admin.list_filter:
        if isinstance(item, type) and issubclass(item, SimpleListFilter):
            names.append(item.parameter_name)
            continue
        if isinstance(item, (tuple, list)):
            item = item[0]
        if isinstance(item, type) and issubclass(item, FieldListFilter):
            continue
        field = opts.get_field(item)
        if field.is_relation:
            names += [f"{item}__id__exact", f"{item}__isnull"]
        elif isinstance(field, (models.DateField, models.DateTimeField)):
            names += [f"{item}__gte", f"{item}__lt"]
        else:
            names.append(f"{item}__exact")
    if model_admin.search_fields:
        names.append("q")
    if model_admin.date_hierarchy:
        names.append(f"{model_admin.date_hierarchy}__year")
    return names + ["o", "p", "\x00"]


def _changelist_cases() -> list[tuple[str, str]]:
    cases = []
    for model, model_admin in admin.site._registry.items():
        url = f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"
        cases += [(url, name) for name in _filter_parameters(model_admin)]
    return cases


CASES = _changelist_cases()


@pytest.fixture
def some_rows(admin_user):
    """A target row and audit events, so the filters have something to compare with."""
    from opsapp.services.actors import Actor
    from opsapp.services.audit.log import append_event

    Target.objects.create(name="rbt")
    append_event(
        action=AuditAction.HEADS_CHANGED,
        outcome=AuditOutcome.INFO,
        actor=Actor.from_user(admin_user),
        target="rbt",
        message="x",
    )
    assert AuditEvent.objects.exists()


def test_every_registered_changelist_filter_and_search_is_covered():
    urls = {url for url, _ in CASES}
    for name in ("target", "revision", "snapshot", "rollbackrequest", "auditevent"):
        assert f"admin:opsapp_{name}_changelist" in urls
    params = {name for _, name in CASES}
    assert {"q", "target_name", "actor", "status__exact", "applied", "branch_label", "created_at__year"} <= params


@pytest.mark.parametrize("url_name,param", CASES, ids=[f"{u.split(':')[1]}-{p!r}" for u, p in CASES])
def test_a_nul_byte_in_a_changelist_parameter_answers_400(client, admin_user, some_rows, url_name, param):
    client.raise_request_exception = True
    client.force_login(admin_user)
    url = reverse(url_name)
    assert client.get(url).status_code == 200
    for value in NUL_VALUES:
        response = client.get(url, {param: value})
        assert response.status_code == 400, (url, param, value, response.status_code)
        assert NUL_REFUSAL in response.content.decode()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("param", ["q", "target_name", "actor", "action__exact", "outcome__exact", "created_at__year"])
def test_a_nul_byte_in_an_export_parameter_answers_400_and_exports_nothing(client, admin_user, some_rows, fmt, param):
    client.raise_request_exception = True
    client.force_login(admin_user)
    before = AuditEvent.objects.count()
    url = reverse("admin:opsapp_auditevent_export", args=[fmt])
    response = client.post(f"{url}?{param}=rbt%00")
    assert response.status_code == 400
    assert AuditEvent.objects.count() == before  # no export started, none audited
    assert client.post(f"{url}?{param}=nothing").status_code in (200, 400)


def test_a_nul_byte_in_the_request_form_prefill_answers_400(client, admin_user):
    client.raise_request_exception = True
    client.force_login(admin_user)
    url = reverse("admin:opsapp_rollbackrequest_add")
    assert client.get(url, {"to": "r1\x00"}).status_code == 400
    assert client.get(url, {"target": "\x00"}).status_code == 400


def test_a_nul_byte_never_reaches_a_view_even_for_an_anonymous_visitor(client):
    response = client.get(reverse("admin:login"), {"next": "/admin/\x00"})
    assert response.status_code == 400


@pytest.mark.parametrize("cookie", ["sessionid", "csrftoken", "anything"])
def test_a_nul_byte_in_a_cookie_answers_400_not_a_500(client, cookie):
    """A quoted cookie value decodes `\\000` to NUL; the session lookup then raised DataError on every page."""
    client.raise_request_exception = True
    response = client.get(reverse("admin:login"), HTTP_COOKIE=f'{cookie}="\\000abcdefghijk"')
    assert response.status_code == 400
    assert response.content.decode() == NUL_COOKIE_REFUSAL


def test_an_ordinary_cookie_still_passes(client, admin_user):
    client.force_login(admin_user)
    assert client.get(reverse("admin:index")).status_code == 200
