"""Admin URLs with ids that do not exist or are not numbers answer 404 (or redirect), never 500."""

from __future__ import annotations

import pytest

from tests.operations_support import run_queued_jobs

pytestmark = pytest.mark.django_db

BAD_IDS = ["999999", "abc", "1.5", "-1", "\u00b2", "\u0661"]  # "²" and an Arabic-Indic one are isdigit()


@pytest.mark.parametrize("object_id", BAD_IDS)
@pytest.mark.parametrize(
    "path",
    [
        "/admin/opsapp/target/{}/change/",
        "/admin/opsapp/target/{}/graph/",
        "/admin/opsapp/revision/{}/change/",
        "/admin/opsapp/snapshot/{}/change/",
        "/admin/opsapp/auditevent/{}/change/",
        "/admin/opsapp/rollbackrequest/{}/change/",
        "/admin/opsapp/rollbackrequest/{}/execute/",
        "/admin/opsapp/rollbackrequest/{}/attach/",
        "/admin/opsapp/rollbackrequest/{}/reissue/",
        "/admin/opsapp/rollbackrequest/{}/cancel/",
        "/admin/opsapp/rollbackrequest/{}/take-snapshot/",
        "/admin/opsapp/target/{}/sync/",
        "/admin/opsapp/operation/{}/change/",
        "/admin/opsapp/operation/{}/cancel/",
        "/admin/opsapp/snapshot/{}/restore/",
    ],
)
@pytest.mark.parametrize("method", ["get", "post"])
def test_it_answers_bad_object_ids_without_a_server_error(client, admin_user, path, object_id, method):
    client.raise_request_exception = True
    client.force_login(admin_user)
    response = getattr(client, method)(path.format(object_id))
    assert response.status_code in (302, 403, 404, 405), (path, object_id, response.status_code)


@pytest.mark.parametrize(
    "url",
    [
        "/admin/opsapp/auditevent/?created_at__year=abc",
        "/admin/opsapp/auditevent/?created_at__year=2026&created_at__month=13",
        "/admin/opsapp/auditevent/?created_at__year=99999",
        "/admin/opsapp/auditevent/?seq__gte=abc",
        "/admin/opsapp/auditevent/?target_name=nope&actor=nobody",
        "/admin/opsapp/auditevent/?o=99",
        "/admin/opsapp/auditevent/export/xml/",
        "/admin/opsapp/revision/?target__id__exact=abc",
        "/admin/opsapp/revision/?branch_label=nope&applied=maybe",
        "/admin/opsapp/snapshot/?started_at__year=abc",
        "/admin/opsapp/rollbackrequest/?created_at__day=40&created_at__month=2&created_at__year=2026",
        "/admin/opsapp/rollbackrequest/add/?target=999999&to=zzz",
        "/admin/opsapp/rollbackrequest/add/?target=abc",
    ],
)
def test_it_answers_bad_list_parameters_without_a_server_error(client, admin_user, url):
    client.raise_request_exception = True
    client.force_login(admin_user)
    response = client.get(url)
    assert response.status_code in (200, 302, 400, 404), (url, response.status_code)


@pytest.mark.parametrize(
    "url, data",
    [
        ("/admin/opsapp/rollbackrequest/add/", {"target": "999999", "to": "zzz", "reason": "x"}),
        ("/admin/opsapp/rollbackrequest/add/", {"target": "abc", "to": "", "reason": ""}),
        ("/admin/opsapp/auditevent/export/csv/?created_at__year=abc", {}),
        ("/admin/opsapp/snapshot/take/", {"target": "abc"}),
        ("/admin/opsapp/snapshot/take/", {"target": "999999", "next": "https://evil.example/"}),
    ],
)
def test_it_answers_bad_posts_without_a_server_error(client, admin_user, url, data):
    client.raise_request_exception = True
    client.force_login(admin_user)
    response = client.post(url, data)
    assert response.status_code in (200, 302, 400, 404), (url, response.status_code)
    if response.status_code == 302:
        assert "evil.example" not in response["Location"]


DOWN_URL = "postgresql://u:Down-S3cret@127.0.0.1:1/x"


def test_every_page_of_a_target_that_is_down_renders_and_never_shows_its_password(
    client, admin_user, branchy_scripts, configure_target
):
    from opsapp.models import Revision
    from opsapp.services.catalog.sync import sync_target

    configure_target("down", DOWN_URL, branchy_scripts.ini)
    target = sync_target("down")
    assert target.state == "unreachable"
    revision = Revision.objects.filter(catalog_id=target.catalog_id).first()
    client.raise_request_exception = True
    client.force_login(admin_user)
    pages = [
        "/admin/",
        "/admin/opsapp/target/",
        f"/admin/opsapp/target/{target.pk}/change/",
        f"/admin/opsapp/target/{target.pk}/graph/",
        "/admin/opsapp/revision/",
        f"/admin/opsapp/revision/{revision.pk}/change/",
        f"/admin/opsapp/rollbackrequest/add/?target={target.name}&to={revision.revision}",
        "/admin/opsapp/auditevent/",
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        assert "Down-S3cret" not in response.content.decode(), page
    posts = [
        ("/admin/opsapp/rollbackrequest/add/", {"target": target.name, "to": revision.revision, "reason": "x"}),
        ("/admin/opsapp/snapshot/take/", {"target": target.pk}),
        (f"/admin/opsapp/target/{target.pk}/sync/", {}),
    ]
    for page, data in posts:
        response = client.post(page, data, follow=True)
        assert response.status_code == 200, page
        if run_queued_jobs():  # the snapshot is queued; its operation page shows how the worker's attempt ended
            response = client.get(response.redirect_chain[-1][0])
        text = response.content.decode()
        assert "Down-S3cret" not in text, page
        assert "unreachable" in text, page
