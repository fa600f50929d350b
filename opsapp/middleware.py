"""Request guards: no NUL byte in a query string or a cookie; no admin page without a second factor.

NulQueryMiddleware answers 400 to a query string (or path) holding a NUL
byte. PostgreSQL text cannot hold NUL, so every changelist filter, search
and export parameter that reached a query with one raised DataError (a 500);
one check here covers every page, present and future. Cookies too: a quoted
cookie value decodes `\\000` to NUL, and the session lookup then failed on
every page, login included. POSTed form fields are left to the forms
(Django's fields refuse NUL with a form error).

TwoFactorMiddleware: no admin page without a second factor while OPS_REQUIRE_2FA is on.

After the password, a staff user's session is authenticated but not verified.
Until it is, every view except the 2FA pages, login and logout answers with a
redirect: to the token page when the user has an authenticator, to enrollment
when they have none. POSTs are redirected too, so no operator action runs.
The setting is read per request (tests switch it with pytest-django's
`settings` fixture).
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import HttpResponseBadRequest
from django.shortcuts import redirect
from django.urls import reverse

from opsapp.services import two_factor

# The only views an authenticated but unverified user may reach.
OPEN_VIEWS = {
    "opsapp_2fa_verify",
    "opsapp_2fa_enroll",
    "admin:login",
    "admin:logout",
    "admin:jsi18n",
}


NUL_REFUSAL = "Bad request: a parameter holds a NUL byte (%00), which no filter, search or export accepts."
NUL_COOKIE_REFUSAL = "Bad request: a cookie holds a NUL byte; clear this site's cookies and sign in again."


class NulQueryMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
        ):
            return HttpResponseBadRequest(NUL_REFUSAL, content_type="text/plain; charset=utf-8")
        if any("\x00" in name or "\x00" in value for name, value in request.COOKIES.items()):
            return HttpResponseBadRequest(NUL_COOKIE_REFUSAL, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


class TwoFactorMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = request.resolver_match
        name = match.view_name if match else ""
        if name in OPEN_VIEWS or not two_factor.is_required(request.user) or request.user.is_verified():
            return None
        page = "opsapp_2fa_verify" if two_factor.has_device(request.user) else "opsapp_2fa_enroll"
        next_url = request.get_full_path() if request.method == "GET" else reverse("admin:index")
        return redirect(f"{reverse(page)}?{urlencode({'next': next_url})}")
