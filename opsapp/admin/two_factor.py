"""The 2FA pages of the admin: token after the password, enrollment, a superuser's reset.

Thin edges over opsapp.services.two_factor. URLs (console/urls.py, under
/admin/2fa/): `opsapp_2fa_verify`, `opsapp_2fa_enroll`, `opsapp_2fa_reset`.
The middleware (opsapp.middleware) sends an unverified user here.

A refused token counts as a failed login for django-axes (same user name and
client address as the password form), so a lockout covers both factors.
"""

from __future__ import annotations

from urllib.parse import urlencode

import django_otp
from axes.handlers.proxy import AxesProxyHandler
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_login_failed
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from opsapp.models.two_factor import AuthenticatorDevice
from opsapp.services import two_factor
from opsapp.services.actors import Actor

# django-otp's own admin pages show the TOTP key and backup codes (and the console uses neither model).
for _model in (TOTPDevice, StaticDevice):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)

# The pending secret, sealed (services.two_factor.seal_pending): sessions are stored in the console DB.
PENDING_KEY = "opsapp_2fa_pending_key"


def _next_url(request: HttpRequest) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    # A control character (a NUL above all) is never part of a page of ours; browsers drop some of
    # them, so "/\x00/evil.example" would become "//evil.example", another host.
    if any(ord(char) < 32 or ord(char) == 127 for char in candidate):
        return reverse("admin:index")
    if url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse("admin:index")


def _with_next(url_name: str, next_url: str) -> str:
    return f"{reverse(url_name)}?{urlencode({'next': next_url})}"


def _context(request: HttpRequest, title: str, **extra) -> dict:
    # No sidebar or app list: the user has not passed the second factor yet.
    return {
        **admin.site.each_context(request),
        "title": title,
        "is_nav_sidebar_enabled": False,
        "available_apps": [],
        "next": _next_url(request),
        **extra,
    }


def _locked_out(request: HttpRequest) -> bool:
    """True (and the request marked, so AxesMiddleware answers 429) when axes locks this user out."""
    credentials = {"username": request.user.get_username()}
    if AxesProxyHandler.is_locked(request, credentials):
        request.axes_locked_out = True
        return True
    return False


def _count_failure(request: HttpRequest) -> None:
    # What a wrong password sends: axes counts it under the same user name and client address.
    user_login_failed.send(sender=__name__, credentials={"username": request.user.get_username()}, request=request)


def _verified(request: HttpRequest, device) -> None:
    request.session.cycle_key()  # a new session id once the second factor is passed
    django_otp.login(request, device)


def _gate(request: HttpRequest) -> HttpResponse | None:
    """Where to go instead of the 2FA pages: login when anonymous, onwards when nothing is needed."""
    if not request.user.is_authenticated:
        return redirect(_with_next("admin:login", reverse("admin:index")))
    if not two_factor.is_required(request.user) or request.user.is_verified():
        return redirect(_next_url(request))
    return None


@sensitive_post_parameters("token")
@csrf_protect
@never_cache
@sensitive_variables()
def verify_view(request: HttpRequest) -> HttpResponse:
    """The token page after the password: a TOTP token or one backup code."""
    if (response := _gate(request)) is not None:
        return response
    if not two_factor.has_device(request.user):
        return redirect(_with_next("opsapp_2fa_enroll", _next_url(request)))
    error = ""
    if request.method == "POST":
        if _locked_out(request):
            return HttpResponse(status=429)
        try:
            result = two_factor.verify(Actor.from_request(request), request.user, request.POST.get("token", ""))
        except two_factor.TwoFactorError as exc:
            _count_failure(request)
            if getattr(request, "axes_locked_out", False):
                return HttpResponse(status=429)
            error = str(exc)
        else:
            _verified(request, result.device)
            if result.backup_code_used:
                level = messages.WARNING if result.backup_codes_left <= 3 else messages.INFO
                messages.add_message(
                    request,
                    level,
                    f"You signed in with a backup code; {result.backup_codes_left} left. "
                    "If you lost your authenticator, ask a superuser to reset your 2FA.",
                )
            return redirect(_next_url(request))
    return TemplateResponse(
        request,
        "admin/opsapp/two_factor/verify.html",
        _context(request, "Two-factor sign-in", error=error, username=request.user.get_username()),
    )


@sensitive_post_parameters("token")
@csrf_protect
@never_cache
@sensitive_variables()
def enroll_view(request: HttpRequest) -> HttpResponse:
    """Enrollment: scan the QR code (or type the secret), confirm one token, save the backup codes."""
    if (response := _gate(request)) is not None:
        return response
    if two_factor.has_device(request.user):
        return redirect(_with_next("opsapp_2fa_verify", _next_url(request)))
    key = two_factor.unseal_pending(request.session.get(PENDING_KEY))
    if key is None:
        key = two_factor.new_secret()
        request.session[PENDING_KEY] = two_factor.seal_pending(key)
    error = ""
    if request.method == "POST":
        if _locked_out(request):
            return HttpResponse(status=429)
        try:
            device, codes = two_factor.confirm_enrollment(
                Actor.from_request(request), request.user, key, request.POST.get("token", "")
            )
        except two_factor.TwoFactorError as exc:
            _count_failure(request)
            if getattr(request, "axes_locked_out", False):
                return HttpResponse(status=429)
            error = str(exc)
        else:
            del request.session[PENDING_KEY]
            _verified(request, device)
            # Rendered in the POST's own response, never stored: reloading cannot show them again.
            return TemplateResponse(
                request,
                "admin/opsapp/two_factor/backup_codes.html",
                _context(request, "Save your backup codes", codes=codes),
            )
    uri = two_factor.provisioning_uri(request.user, key)
    return TemplateResponse(
        request,
        "admin/opsapp/two_factor/enroll.html",
        _context(
            request,
            "Set up two-factor sign-in",
            error=error,
            qr_svg=two_factor.qr_svg(uri),
            secret=two_factor.secret_base32(key),
            username=request.user.get_username(),
        ),
    )


@csrf_protect
@never_cache
def reset_view(request: HttpRequest, user_id: int) -> HttpResponse:
    """A superuser removes another user's devices (confirmation page, then POST). Audited."""
    if not request.user.is_superuser:
        raise PermissionDenied
    user = get_object_or_404(get_user_model(), pk=user_id)
    change_url = reverse("admin:auth_user_change", args=[user.pk])
    if request.method == "POST":
        count = two_factor.reset_devices(Actor.from_request(request), user)
        messages.success(
            request, f"Removed {count} 2FA device(s) of {user.get_username()}; they enroll again at their next sign-in."
        )
        return redirect(change_url)
    devices = [
        {"kind": "authenticator" if isinstance(d, AuthenticatorDevice) else "backup codes", "name": d.name}
        for d in django_otp.devices_for_user(user, confirmed=None)
    ]
    return TemplateResponse(
        request,
        "admin/opsapp/two_factor/reset_confirm.html",
        {
            **admin.site.each_context(request),
            "title": f"Reset 2FA of {user.get_username()}",
            "subject": user,
            "devices": devices,
            "change_url": change_url,
        },
    )


urlpatterns = [
    path("verify/", verify_view, name="opsapp_2fa_verify"),
    path("enroll/", enroll_view, name="opsapp_2fa_enroll"),
    path("reset/<int:user_id>/", admin.site.admin_view(reset_view), name="opsapp_2fa_reset"),
]
