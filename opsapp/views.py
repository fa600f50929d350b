"""The few views outside the admin: the 403 page with the admin's frame, and /favicon.ico."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.templatetags.static import static

from opsapp.roles import ROLES

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
