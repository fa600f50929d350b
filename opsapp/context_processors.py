from __future__ import annotations

from django.conf import settings


def environment(request) -> dict:
    """Expose the environment banner (OPS_ENVIRONMENT_NAME) to every admin page."""
    name = settings.OPS_ENVIRONMENT_NAME
    colour = settings.OPS_ENVIRONMENT_COLOUR or ("#b00020" if name.upper().startswith("PROD") else "#8a5a00")
    return {"ops_environment_name": name, "ops_environment_colour": colour}
