"""Views outside the admin: /metrics for Prometheus.

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
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from opsapp.services.actors import client_ip
from opsapp.services.metrics import render_metrics


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
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
