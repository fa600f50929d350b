"""An error report (ADMINS mail, Sentry) raised inside 2FA code shows no TOTP secret and no backup code.

Review of the 2FA-at-rest merge: the secret sits in clear in the locals of
the enrollment functions, and Django's reports quote every frame's locals
unless the function is marked with sensitive_variables.
"""

from __future__ import annotations

import sys
from base64 import b32encode

import pytest
from django.contrib.auth import get_user_model
from django.views.debug import ExceptionReporter, get_default_exception_reporter_filter

from opsapp.services import sealing, two_factor
from opsapp.services.actors import Actor

pytestmark = pytest.mark.django_db


def _report(call) -> str:
    try:
        call()
    except Exception:
        reporter = ExceptionReporter(None, *sys.exc_info())
    else:
        raise AssertionError("the call was expected to fail")
    frames = reporter.get_traceback_data()["frames"]
    # Every frame and the value of every local the report shows (pretty-printed, as on the page and in the mail).
    return "\n".join(
        f"{frame['function']} " + " ".join(f"{name}={value}" for name, value in frame["vars"])
        for frame in frames
        if "/opsapp/" in frame["filename"]  # the test's own frames hold the secret, of course
    )


@pytest.fixture
def production(settings):
    settings.DEBUG = False
    get_default_exception_reporter_filter.cache_clear()
    yield
    get_default_exception_reporter_filter.cache_clear()


def test_a_failure_inside_enrollment_reports_no_secret_and_no_token(production):
    unsaved = get_user_model()(username="ghost", is_staff=True)  # its first query raises ValueError
    secret = two_factor.new_secret()
    token = "".join(["918", "273"])

    text = _report(lambda: two_factor.confirm_enrollment(Actor.cli("t"), unsaved, secret, token))

    assert "confirm_enrollment" in text  # the frame is in the report, its values are not
    for shown in (repr(secret)[2:-1], b32encode(secret).decode(), secret.hex(), token):
        assert shown not in text


def test_a_failure_while_sealing_reports_no_clear_value_and_no_secret_key(production, settings):
    secret = two_factor.new_secret()

    text = _report(lambda: sealing.seal(secret, object()))  # a purpose that is no text: AttributeError

    assert "seal" in text
    assert repr(secret)[2:-1] not in text
    assert settings.SECRET_KEY not in text  # the key derivation's own locals hold it
