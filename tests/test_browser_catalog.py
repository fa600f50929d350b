"""Revision pages of a script directory shared by two targets, in a real browser at 1280 and 1920 px."""

from __future__ import annotations

import pytest
from browser_support import log_in, new_page, screenshot, submit_login
from django.urls import reverse
from test_browser import _role_groups, browser  # noqa: F401 (fixtures)

from tests.histories import run_alembic
from tests.two_factor_support import make_device

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def overflows(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth")


def test_a_shared_directorys_revision_pages_fit_and_name_the_target_shown(
    live_server,
    browser,  # noqa: F811
    branchy_scripts,
    pg_database_factory,
    configure_target,
    operator,
    settings,
):
    from opsapp.models import Revision
    from opsapp.services.catalog.sync import sync_all

    settings.OPS_TARGETS = {}
    configure_target("tenant_early", pg_database_factory(), branchy_scripts.ini)
    configure_target("tenant_late", pg_database_factory(), branchy_scripts.ini)
    run_alembic("tenant_early", "upgrade", "c3")
    run_alembic("tenant_late", "upgrade", "heads")
    early, late = sync_all()
    d4 = Revision.objects.get(catalog_id=early.catalog_id, revision="d4")
    pages = {
        "revisions": reverse("admin:opsapp_revision_changelist"),
        "revisions-early": reverse("admin:opsapp_revision_changelist") + f"?target__id__exact={early.pk}",
        "revision-late": reverse("admin:opsapp_revision_change", args=[d4.pk]) + f"?target={late.pk}",
    }
    device = make_device(operator)
    for width, height in ((1280, 800), (1920, 1080)):
        page = new_page(browser, live_server.url)
        page.set_viewport_size({"width": width, "height": height})
        log_in(page, "olga", "pw-olga")
        submit_login(page, device)
        for name, url in pages.items():
            page.goto(url)
            screenshot(page, f"catalog-shared-{name}-{width}")
            assert not overflows(page), f"{name} is wider than {width} px"
        page.goto(pages["revision-late"])
        assert "Shown for target tenant_late" in page.locator("#other-targets").inner_text()
        page.goto(pages["revisions-early"])
        # At c3, early has applied a1, b2 and c3 of the nine: six are pending for it (none for late).
        assert page.locator(".ops-flag-pending").count() == 6
        page.context.close()
