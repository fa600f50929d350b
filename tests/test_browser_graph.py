"""The revision graph of a few-hundred-revision history in the real Chromium (issue 15).

Jump links and the "jump to a revision" form must bring the node into view inside the graph's
scroll box without JavaScript; "collapse linear runs" must shorten the page. Screenshots at
1280 x 800 and 1920 x 1080 go to screenshots/graph-*.png for a person to look at; axe finds no
serious or critical violation.
"""

from __future__ import annotations

import pytest
from alembic import command
from browser_support import log_in, navigate, new_page, screenshot, submit_login
from django.urls import reverse
from test_browser import _role_groups, browser  # noqa: F401 (fixtures)

from opsapp.demo.history_gen import generate_history
from opsapp.services.alembic_api import connect, make_config
from opsapp.targets import get_target
from tests.two_factor_support import make_device

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def in_view(page, revision: str) -> bool:
    """Whether the node of `revision` is visible inside the graph's scroll box and the window."""
    return page.evaluate(
        """(id) => {
        const node = document.getElementById(id);
        if (!node) return false;
        const r = node.getBoundingClientRect();
        const box = document.querySelector('.ops-graph-box').getBoundingClientRect();
        return r.top >= box.top && r.bottom <= box.bottom && r.top >= 0 && r.bottom <= window.innerHeight;
    }""",
        f"rev-{revision}",
    )


def graph_height(page) -> float:
    return page.evaluate("() => document.querySelector('.ops-graph-box svg').getBoundingClientRect().height")


def test_the_graph_of_300_revisions_jumps_to_current_head_and_id_and_collapses(
    live_server,
    browser,  # noqa: F811
    pg_url,
    script_dir_factory,
    configure_target,
    operator,
    django_user_model,
):
    from axe_playwright_python.sync_playwright import Axe

    from opsapp.models import Revision
    from opsapp.services.catalog.sync import sync_target

    sd = script_dir_factory()
    revisions = generate_history(sd, 300, merges=12, seed=9)
    configure_target("big", pg_url, sd.ini)
    current = revisions[60]
    config = get_target("big")
    with connect(config) as conn:
        command.stamp(make_config(config, connection=conn), [current])
        conn.commit()
    target = sync_target("big")
    head = Revision.objects.get(catalog_id=target.catalog_id, is_head=True).revision
    deep = revisions[5]  # far down the scroll box
    url = reverse("admin:opsapp_target_graph", args=[target.pk])
    device = make_device(operator)
    axe = Axe()
    for width, height in ((1280, 800), (1920, 1080)):
        page = new_page(browser, live_server.url)
        page.set_viewport_size({"width": width, "height": height})
        log_in(page, "olga", "pw-olga")
        submit_login(page, device)
        page.goto(url)
        screenshot(page, f"graph-300-{width}")
        assert not in_view(page, current)
        navigate(page, page.locator("a.ops-jump-current"))
        assert in_view(page, current), "the current-revision link did not bring the node into view"
        screenshot(page, f"graph-300-current-{width}")
        page.locator("a.ops-jump-head").first.click()
        assert in_view(page, head)

        page.get_by_label("Revision:").fill(deep[:7])
        navigate(page, page.get_by_role("button", name="Go"))
        assert page.url.endswith(f"#rev-{deep}")
        assert in_view(page, deep)

        full = graph_height(page)
        navigate(page, page.get_by_role("link", name="Collapse linear runs"))
        assert graph_height(page) < full / 2
        screenshot(page, f"graph-300-collapsed-{width}")
        page.get_by_label("Revision:").fill(deep[:7])
        navigate(page, page.get_by_role("button", name="Go"))
        assert in_view(page, deep)  # the run holding it is opened around it
        if width == 1280:
            violations = [
                f"{v['id']} ({v['impact']}): {v['help']}"
                for v in axe.run(page).response["violations"]
                if v["impact"] in ("serious", "critical")
            ]
            assert violations == []
        page.context.close()
