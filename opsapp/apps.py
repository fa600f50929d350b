from __future__ import annotations

from django.apps import AppConfig


class OpsappConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "opsapp"
    verbose_name = "Migration operations"

    def ready(self) -> None:
        from opsapp import checks  # noqa: F401  (registers the system checks)
