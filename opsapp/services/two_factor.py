"""Two-factor sign-in: TOTP devices (django-otp) plus single-use backup codes.

Who needs it: every active staff user (operators, approvers, auditors,
superusers, and staff without a group) while `OPS_REQUIRE_2FA` is on. The
setting is read on every call, never cached, so a test or an operator can flip
it without a restart.

Secrets never leave this module except to the edge that must show them once:
the TOTP secret (enrollment page, `otp_enroll`) and freshly generated backup
codes. Neither goes into an audit event, a log line or an exception message.
"""

from __future__ import annotations

import re
import secrets
from base64 import b32encode
from binascii import unhexlify
from dataclasses import dataclass
from io import BytesIO

from django.conf import settings
from django.db import transaction
from django_otp import devices_for_user
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_otp.util import random_hex

from opsapp.models import AuditAction, AuditOutcome
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event
from opsapp.services.errors import OpsError

TOTP_DEVICE_NAME = "authenticator"
BACKUP_DEVICE_NAME = "backup codes"
# TOTP tokens are six digits; backup codes are ten base32 characters (shown as xxxxx-xxxxx).
_TOTP_RE = re.compile(r"^\d{6}$")
_BACKUP_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read from paper


class TwoFactorError(OpsError):
    """A token was refused or an enrollment/reset is not possible; `.reason` says why."""


@dataclass(frozen=True)
class Verified:
    """A successful token check: the device that accepted it, and backup codes left."""

    device: TOTPDevice | StaticDevice
    backup_code_used: bool
    backup_codes_left: int


def is_required(user) -> bool:
    """True when `user` must pass a second factor before any admin page (OPS_REQUIRE_2FA)."""
    if not getattr(settings, "OPS_REQUIRE_2FA", False):
        return False
    return bool(user.is_authenticated and user.is_active and (user.is_staff or user.is_superuser))


def has_device(user) -> bool:
    """True when `user` has a confirmed TOTP device (backup codes alone do not count as enrolled)."""
    return TOTPDevice.objects.devices_for_user(user, confirmed=True).exists()


def new_secret() -> str:
    """A fresh TOTP secret, hex-encoded (20 random bytes, as django-otp's default)."""
    return random_hex(20)


def secret_base32(key_hex: str) -> str:
    """The secret as a person types it into an authenticator app (base32, groups of four)."""
    text = b32encode(unhexlify(key_hex)).decode()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def provisioning_uri(user, key_hex: str) -> str:
    """The otpauth:// URI an authenticator app reads from the QR code."""
    return TOTPDevice(user=user, key=key_hex, name=TOTP_DEVICE_NAME).config_url


def qr_svg(uri: str) -> str:
    """The QR code of `uri` as inline SVG, rendered here (no CDN, no external service).

    Only a viewBox, no width/height: the page's CSS sizes it without cropping.
    """
    import segno

    out = BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", border=2, xmldecl=False, omitsize=True, dark="#000")
    return out.getvalue().decode()


def _new_backup_code() -> str:
    return "".join(secrets.choice(_BACKUP_ALPHABET) for _ in range(10))


def format_backup_code(code: str) -> str:
    return f"{code[:5]}-{code[5:]}"


def _normalize(token: str) -> str:
    return re.sub(r"[\s-]", "", token or "").lower()


def _issue_backup_codes(user) -> list[str]:
    """Replace the user's backup codes with OPS_BACKUP_CODE_COUNT new ones; return them (shown once)."""
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name=BACKUP_DEVICE_NAME, confirmed=True)
    codes = [_new_backup_code() for _ in range(settings.OPS_BACKUP_CODE_COUNT)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=code) for code in codes])
    return [format_backup_code(code) for code in codes]


def _audit(action: AuditAction, outcome: AuditOutcome, actor: Actor, user, message: str, **detail) -> None:
    append_event(
        action=action,
        outcome=outcome,
        actor=actor,
        message=message,
        detail={"user": user.get_username(), "user_id": user.pk, **detail},
    )


def confirm_enrollment(actor: Actor, user, key_hex: str, token: str) -> tuple[TOTPDevice, list[str]]:
    """Confirm a pending secret with one token: store the device, issue backup codes.

    Returns the new device and the backup codes (the only time they exist in
    clear outside the database). Raises TwoFactorError (audited as a rejected
    token) when the token does not match, or when the user already has a device.
    """
    if has_device(user):
        raise TwoFactorError(f"{user.get_username()} already has an authenticator; reset it first.", reason="enrolled")
    totp = TOTP(unhexlify(key_hex), step=30, digits=6)
    token = _normalize(token)
    if not (_TOTP_RE.match(token) and totp.verify(int(token), tolerance=1)):
        _audit(
            AuditAction.OTP_TOKEN_REJECTED,
            AuditOutcome.REFUSED,
            actor,
            user,
            "enrollment token did not match",
            stage="enrollment",
        )
        raise TwoFactorError("That code does not match. Check the time on your phone and try again.", reason="token")
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        device = TOTPDevice.objects.create(
            user=user, name=TOTP_DEVICE_NAME, key=key_hex, confirmed=True, last_t=totp.t()
        )
        codes = _issue_backup_codes(user)
        _audit(
            AuditAction.OTP_ENROLLED,
            AuditOutcome.SUCCESS,
            actor,
            user,
            f"{user.get_username()} enrolled an authenticator",
            via="admin",
            backup_codes_issued=len(codes),
        )
    return device, codes


def enroll_headless(actor: Actor, user) -> tuple[TOTPDevice, list[str]]:
    """Create a confirmed TOTP device and backup codes without a token (`otp_enroll`).

    Whoever runs the command holds the server; the URI they pass on is the
    secret. Raises TwoFactorError when the user already has a device.
    """
    if has_device(user):
        raise TwoFactorError(
            f"{user.get_username()} already has an authenticator; run otp_reset first.", reason="enrolled"
        )
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        device = TOTPDevice.objects.create(user=user, name=TOTP_DEVICE_NAME, key=new_secret(), confirmed=True)
        codes = _issue_backup_codes(user)
        _audit(
            AuditAction.OTP_ENROLLED,
            AuditOutcome.SUCCESS,
            actor,
            user,
            f"{user.get_username()} enrolled an authenticator from the command line",
            via="command",
            backup_codes_issued=len(codes),
        )
    return device, codes


def reset_devices(actor: Actor, user) -> int:
    """Delete every 2FA device of `user` (TOTP and backup codes); return how many. Audited.

    The user must enroll again at their next sign-in. The audit event names
    the devices, never their secrets.
    """
    with transaction.atomic():
        devices = list(devices_for_user(user, confirmed=None))
        for device in devices:
            device.delete()
        _audit(
            AuditAction.OTP_RESET,
            AuditOutcome.SUCCESS,
            actor,
            user,
            f"2FA devices of {user.get_username()} reset",
            devices=[type(d).__name__ for d in devices],
        )
    return len(devices)


def verify(actor: Actor, user, token: str) -> Verified:
    """Check a TOTP token or a backup code for `user`; a backup code is used up.

    Six digits are checked against the authenticator, anything else against the
    backup codes, so a backup code never counts as a failure of the
    authenticator's own throttle. Raises TwoFactorError (audited) when refused,
    including while django-otp's per-device back-off is in force.
    """
    token = _normalize(token)
    kind = "totp" if _TOTP_RE.match(token) else "backup code"
    model = TOTPDevice if kind == "totp" else StaticDevice
    with transaction.atomic():
        device = model.objects.devices_for_user(user, confirmed=True).select_for_update().first()
        allowed = device is not None and device.verify_is_allowed()[0]
        ok = bool(allowed and token and device.verify_token(token))
    if not ok:
        reason = "throttled" if device is not None and not allowed else "token"
        _audit(
            AuditAction.OTP_TOKEN_REJECTED,
            AuditOutcome.REFUSED,
            actor,
            user,
            f"{kind} refused" + (" (too many failures, waiting)" if reason == "throttled" else ""),
            stage="sign-in",
            kind=kind,
        )
        if reason == "throttled":
            raise TwoFactorError("Too many wrong codes in a row: wait a little and try again.", reason=reason)
        raise TwoFactorError("That code is not valid.", reason=reason)
    left = StaticToken.objects.filter(device__user=user).count()
    if kind == "backup code":
        _audit(
            AuditAction.OTP_BACKUP_CODE_USED,
            AuditOutcome.SUCCESS,
            actor,
            user,
            f"{user.get_username()} signed in with a backup code",
            backup_codes_left=left,
        )
    return Verified(device=device, backup_code_used=kind == "backup code", backup_codes_left=left)


__all__ = [
    "TwoFactorError",
    "Verified",
    "confirm_enrollment",
    "enroll_headless",
    "has_device",
    "is_required",
    "new_secret",
    "provisioning_uri",
    "qr_svg",
    "reset_devices",
    "secret_base32",
    "verify",
]
