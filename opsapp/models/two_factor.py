"""Two-factor devices whose secrets are never stored in clear (django-otp Device plugins).

django-otp's own TOTPDevice keeps the TOTP key as clear hex and StaticToken
keeps backup codes in clear. These two devices are django-otp devices too
(subclasses of `django_otp.models.Device`, with its throttling and timestamp
mixins, so `django_otp.login`, `OTPMiddleware`, `user.is_verified()` and
`devices_for_user` work unchanged), but:

- AuthenticatorDevice keeps the TOTP key sealed (opsapp.services.sealing,
  Fernet under a key derived from SECRET_KEY) and computes tokens with
  `django_otp.oath.TOTP`, exactly as TOTPDevice does;
- BackupCodeDevice keeps each code only as an HMAC; a code is checked in
  constant time and deleted when used.
"""

from __future__ import annotations

import time
from base64 import b32encode
from urllib.parse import quote, urlencode

from django.conf import settings
from django.db import models
from django.views.decorators.debug import sensitive_variables
from django_otp.models import Device, ThrottlingMixin, TimestampMixin
from django_otp.oath import TOTP

from opsapp.services import sealing


@sensitive_variables()
def normalize_token(token: str) -> str:
    """What a person typed, as stored: no spaces or dashes, lower case."""
    return "".join(ch for ch in (token or "") if ch not in " \t\r\n-").lower()


class AuthenticatorDevice(TimestampMixin, ThrottlingMixin, Device):
    """A TOTP authenticator (RFC 6238, 30 s, 6 digits, SHA-1) with its key sealed at rest."""

    sealed_key = models.TextField(editable=False, help_text="The TOTP key, encrypted (never in clear).")
    step = models.PositiveSmallIntegerField(default=30)
    t0 = models.BigIntegerField(default=0)
    digits = models.PositiveSmallIntegerField(default=6)
    tolerance = models.PositiveSmallIntegerField(default=1)
    drift = models.SmallIntegerField(default=0)
    last_t = models.BigIntegerField(default=-1, help_text="Time step of the last accepted token (no replays).")

    class Meta(Device.Meta):
        verbose_name = "authenticator"

    @property
    @sensitive_variables()
    def bin_key(self) -> bytes:
        """The TOTP key in clear (raises SealError when no configured key opens it)."""
        return sealing.unseal(self.sealed_key, sealing.TOTP_KEY)

    @sensitive_variables()
    def set_key(self, key: bytes) -> None:
        self.sealed_key = sealing.seal(key, sealing.TOTP_KEY)

    def get_throttle_factor(self) -> int:
        return getattr(settings, "OTP_TOTP_THROTTLE_FACTOR", 1)

    @sensitive_variables()
    def totp(self) -> TOTP:
        totp = TOTP(self.bin_key, self.step, self.t0, self.digits, self.drift)
        totp.time = time.time()
        return totp

    @sensitive_variables()
    def verify_token(self, token) -> bool:
        """django-otp's TOTPDevice.verify_token, reading the sealed key."""
        if not self.verify_is_allowed()[0]:
            return False
        try:
            value = int(token)
        except (TypeError, ValueError):
            verified = False
        else:
            totp = self.totp()
            verified = totp.verify(value, self.tolerance, self.last_t + 1)
            if verified:
                self.last_t = totp.t()
                if getattr(settings, "OTP_TOTP_SYNC", True):
                    self.drift = totp.drift
                self.throttle_reset(commit=False)
                self.set_last_used_timestamp(commit=False)
                self.save()
        if not verified:
            self.throttle_increment(commit=True)
        return verified

    @property
    @sensitive_variables()
    def config_url(self) -> str:
        """The otpauth:// URI an authenticator app reads (the format of django-otp's TOTPDevice)."""
        label = self.user.get_username()
        params = urlencode(
            {"secret": b32encode(self.bin_key), "algorithm": "SHA1", "digits": self.digits, "period": self.step}
        )
        issuer = (getattr(settings, "OTP_TOTP_ISSUER", "") or "").replace(":", "")
        if issuer:
            label = f"{issuer}:{label}"
            params += f"&issuer={quote(issuer)}"
        return f"otpauth://totp/{quote(label)}?{params}"


class BackupCodeDevice(TimestampMixin, ThrottlingMixin, Device):
    """A user's set of single-use backup codes; the codes live in BackupCode as keyed hashes."""

    key_id = models.CharField(
        max_length=16, editable=False, help_text="Which derived key hashed the codes (sealing.key_id), not the key."
    )

    class Meta(Device.Meta):
        verbose_name = "backup code set"

    def get_throttle_factor(self) -> int:
        return getattr(settings, "OTP_STATIC_THROTTLE_FACTOR", 1)

    @sensitive_variables()
    def verify_token(self, token) -> bool:
        """True, and the code deleted, when `token` is one of the unused codes. Throttled like django-otp's."""
        if not self.verify_is_allowed()[0]:
            return False
        key = sealing.digest_key(self.key_id, sealing.BACKUP_CODE)
        codes = list(self.codes.order_by("pk"))
        index = None
        if key is not None and codes:
            index = sealing.digest_matches(normalize_token(token), [c.digest for c in codes], key)
        if index is None:
            self.throttle_increment(commit=True)
            return False
        # Deleted only if still there: a code another sign-in used meanwhile is not accepted twice.
        if not BackupCode.objects.filter(pk=codes[index].pk).delete()[0]:
            return False
        self.throttle_reset(commit=False)
        self.set_last_used_timestamp(commit=False)
        self.save()
        return True


class BackupCode(models.Model):
    """One unused backup code of a BackupCodeDevice, as HMAC-SHA256 (hex) of the normalized code."""

    device = models.ForeignKey(BackupCodeDevice, related_name="codes", on_delete=models.CASCADE)
    digest = models.CharField(max_length=64, editable=False)

    def __str__(self) -> str:
        return f"backup code of {self.device}"


def refuse_clear_secrets(sender, instance, **kwargs) -> None:
    """pre_save of django-otp's TOTPDevice and StaticToken: they would store a secret in clear.

    Their tables stay (migration 0007 emptied them) but nothing may write
    there again, e.g. django-otp's own `addstatictoken` command.
    """
    raise RuntimeError(
        f"{sender.__name__} keeps its secret in clear and is not used by this console; "
        "use manage.py otp_enroll (authenticator and backup codes, stored encrypted/hashed)."
    )
