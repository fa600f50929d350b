"""System checks with stable ids, so a bad setting fails `manage.py check` loudly.

opsapp.E001 target without a URL · E002 malformed target URL · E003 missing
alembic.ini · E004 missing script directory / env.py · E005 isolation level
below READ COMMITTED or unknown · E006 bad target name · E007 no targets ·
W001 (check --deploy) verification codes would not be e-mailed.
E020 (check --deploy) two-factor sign-in off with DEBUG off, without OPS_ALLOW_NO_2FA=1.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from opsapp.targets import validate_target


@register(Tags.compatibility)
def check_targets(app_configs=None, **kwargs) -> list[Error]:
    errors: list[Error] = []
    if not settings.OPS_TARGETS:
        errors.append(Error("OPS_TARGETS names no target.", hint="Set OPS_TARGETS=shop,...", id="opsapp.E007"))
    for name in settings.OPS_TARGETS:
        for check_id, message in validate_target(name):
            errors.append(Error(message, id=check_id, obj=f"target {name}"))
    return errors


_UNDELIVERED_BACKENDS = {
    "django.core.mail.backends.console.EmailBackend": "printed to the server's console",
    "django.core.mail.backends.locmem.EmailBackend": "kept in memory",
    "django.core.mail.backends.dummy.EmailBackend": "thrown away",
    "django.core.mail.backends.filebased.EmailBackend": "written to files on the server",
}


@register(Tags.security, deploy=True)
def check_code_delivery(app_configs=None, **kwargs) -> list[Warning]:
    """opsapp.W001 (deploy only): verification codes must reach approvers by real e-mail.

    With the console backend (the quick start's default) a code lands in the
    server log, where whoever reads the log can approve their own downgrade.
    """
    fate = _UNDELIVERED_BACKENDS.get(settings.EMAIL_BACKEND)
    if fate is None:
        return []
    return [
        Warning(
            f"EMAIL_URL sends verification codes to {settings.EMAIL_BACKEND}: codes would be {fate}, "
            "not delivered to approvers, which defeats the two-person rule.",
            hint="Set EMAIL_URL to your mail server, e.g. smtp+tls://user:password@smtp.example.com:587.",
            id="opsapp.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_two_factor(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E020 (deploy only): production requires a second factor unless waived explicitly.

    Without it a stolen password is enough to request a downgrade or to take an
    approver's place.
    """
    if settings.DEBUG or settings.OPS_REQUIRE_2FA or settings.OPS_ALLOW_NO_2FA:
        return []
    return [
        Error(
            "OPS_REQUIRE_2FA is off with DEBUG off: a password alone signs in to a console that can drop tables.",
            hint="Set OPS_REQUIRE_2FA=1 (the default when DEBUG=0), or OPS_ALLOW_NO_2FA=1 to run without it on purpose.",
            id="opsapp.E020",
        )
    ]
