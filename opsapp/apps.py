from __future__ import annotations

from django.apps import AppConfig


class OpsappConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "opsapp"
    verbose_name = "Migration operations"

    def ready(self) -> None:
        from django.db.models.signals import pre_save
        from django_otp.plugins.otp_static.models import StaticToken
        from django_otp.plugins.otp_totp.models import TOTPDevice

        from opsapp import checks  # noqa: F401  (registers the system checks)
        from opsapp.models.two_factor import refuse_clear_secrets

        # django-otp's plugins stay installed (migration 0007 moved their rows into opsapp's sealed devices) but unused.
        for model in (TOTPDevice, StaticToken):
            pre_save.connect(refuse_clear_secrets, sender=model, dispatch_uid=f"opsapp-refuse-{model.__name__}")
