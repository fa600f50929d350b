"""Django's own error pages and reports (DEBUG page, 500 mails) never show a target password."""

from __future__ import annotations

import sys

from django.views.debug import ExceptionReporter, get_default_exception_reporter_filter

# Built at run time: the report quotes this file's source lines, which must not hold the password.
PASSWORD = "-".join(["Err", "S3cret"])


def test_django_error_reports_never_show_a_target_password(settings, branchy_scripts, configure_target):
    from opsapp.targets import get_target

    url = f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"
    configure_target("leaky", url, branchy_scripts.ini)
    settings.DEBUG = True
    get_default_exception_reporter_filter.cache_clear()

    def failing_view(url: str):
        config = get_target("leaky")  # noqa: F841 - a local the report shows
        raise RuntimeError("boom")

    try:
        failing_view(url)
    except RuntimeError:
        reporter = ExceptionReporter(None, *sys.exc_info())
    text = reporter.get_traceback_text()
    html = reporter.get_traceback_html()
    assert "boom" in text and "OPS_TARGETS" in text
    assert "u:***@127.0.0.1:1/x" in html  # the local `url`, masked, still helps debugging
    assert PASSWORD not in text
    assert PASSWORD not in html
