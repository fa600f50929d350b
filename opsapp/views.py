"""The few views outside the admin: the 403 page with the admin's frame, /favicon.ico, and /metrics.

/metrics is off (404) until OPS_METRICS_TOKEN or OPS_METRICS_ALLOWED_IPS is
set. Each one that is set must pass: the token as `Authorization: Bearer
<token>` (compared in constant time), the client address (proxy-aware, as
for the audit log) inside one of the allowed networks. No session, no CSRF:
a scraper is not a user.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.contrib import admin
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.views.decorators.http import require_GET

from opsapp.roles import ROLES
from opsapp.services.actors import client_ip

ROLE_DUTIES = {
    "operators": "request downgrades, take and attach snapshots, execute with a code",
    "approvers": "receive verification codes",
    "auditors": "read and export the audit log",
}


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403: the admin's header (user tools, environment banner) and advice fitting this user."""
    user = request.user
    context = admin.site.each_context(request) if user.is_authenticated and user.is_staff else {}
    groups = sorted(user.groups.values_list("name", flat=True)) if user.is_authenticated else []
    context.update(
        {
            "title": "Permission denied",
            "exception": str(exception or ""),
            "user_groups": groups,
            "other_roles": [(name, ROLE_DUTIES.get(name, "")) for name in ROLES if name not in groups],
            "is_superuser": bool(getattr(user, "is_superuser", False)),
        }
    )
    return TemplateResponse(request, "403.html", context, status=403)


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page links; answer with the shipped icon, not a 404."""
    return HttpResponseRedirect(static("opsapp/favicon.svg"))


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """OPS_METRICS_ALLOWED_IPS as networks (a bad entry is skipped here and reported by opsapp.E088)."""
    networks = []
    for entry in settings.OPS_METRICS_ALLOWED_IPS:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return networks


def _ip_allowed(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(client_ip(request) or "")
    except ValueError:
        return False
    return any(address in network for network in allowed_networks())


def _token_ok(request: HttpRequest) -> bool:
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), settings.OPS_METRICS_TOKEN.encode()
    )


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token, networks = settings.OPS_METRICS_TOKEN, settings.OPS_METRICS_ALLOWED_IPS
    if not token and not networks:
        raise Http404("metrics are off: set OPS_METRICS_TOKEN or OPS_METRICS_ALLOWED_IPS")
    if networks and not _ip_allowed(request):
        return HttpResponse("Forbidden: this address may not scrape metrics.\n", status=403, content_type="text/plain")
    if token and not _token_ok(request):
        response = HttpResponse("Unauthorized: send Authorization: Bearer <OPS_METRICS_TOKEN>.\n", status=401)
        response["Content-Type"] = "text/plain"
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # Imported here: every management command's URL check imports this module, and
    # prometheus_client cost a cron run ~0.1 s for a page cron never serves.
    from prometheus_client import CONTENT_TYPE_LATEST

    from opsapp.services.metrics import render_metrics

    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
