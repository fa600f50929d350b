"""System checks with stable ids, so a bad setting fails `manage.py check` loudly.

opsapp.E001 target without a URL · E002 malformed target URL · E003 missing
alembic.ini · E004 missing script directory / env.py · E005 isolation level
below READ COMMITTED or unknown · E006 bad target name · E007 no targets.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register

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
