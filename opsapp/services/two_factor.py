"""Two-factor sign-in: TOTP devices (django-otp) plus single-use backup codes.

Who needs it: every active staff user (operators, approvers, auditors,
superusers, and staff without a group) while `OPS_REQUIRE_2FA` is on. The
setting is read on every call, never cached, so a test or an operator can flip
it without a restart.

Secrets never leave this module except to the edge that must show them once:
the TOTP secret (enrollment page, `otp_enroll`) and freshly generated backup
codes. Neither goes into an audit event, a log line or an exception message,
nor into the database in clear: the TOTP key is sealed (encrypted), backup
codes are kept as keyed hashes (opsapp.models.two_factor, services.sealing),
and the enrollment page keeps its pending secret sealed in the session.
"""

from __future__ import annotations

import re
import secrets
from base64 import b32encode
from dataclasses import dataclass
from io import BytesIO

from django.conf import settings
from django.db import transaction
from django.views.decorators.debug import sensitive_variables
from django_otp import devices_for_user
from django_otp.oath import TOTP

from opsapp.models import AuditAction, AuditOutcome
from opsapp.models.two_factor import AuthenticatorDevice, BackupCode, BackupCodeDevice, normalize_token
from opsapp.services import sealing
from opsapp.services.actors import Actor
from opsapp.services.audit.log import append_event
from opsapp.services.errors import OpsError

TOTP_DEVICE_NAME = "authenticator"
BACKUP_DEVICE_NAME = "backup codes"
# TOTP tokens are six digits; backup codes are ten base32 characters (shown as xxxxx-xxxxx).
_TOTP_RE = re.compile(r"^\d{6}$")
_BACKUP_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read from paper


_REFUSAL_TEXT = {
    "token": "That code is not valid.",
    "throttled": "Too many wrong codes in a row: wait a little and try again.",
    "unreadable": "Your authenticator cannot be checked (the server's key changed). Ask a superuser to reset your 2FA.",
}
_REFUSAL_NOTES = {
    "throttled": " (too many failures, waiting)",
    "unreadable": " (the stored key opens with no configured SECRET_KEY)",
}


class TwoFactorError(OpsError):
    """A token was refused or an enrollment/reset is not possible; `.reason` says why."""


@dataclass(frozen=True)
class Verified:
    """A successful token check: the device that accepted it, and backup codes left."""

    device: AuthenticatorDevice | BackupCodeDevice
    backup_code_used: bool
    backup_codes_left: int


def is_required(user) -> bool:
    """True when `user` must pass a second factor before any admin page (OPS_REQUIRE_2FA)."""
    if not getattr(settings, "OPS_REQUIRE_2FA", False):
        return False
    return bool(user.is_authenticated and user.is_active and (user.is_staff or user.is_superuser))


def has_device(user) -> bool:
    """True when `user` has a confirmed TOTP device (backup codes alone do not count as enrolled)."""
    return AuthenticatorDevice.objects.devices_for_user(user, confirmed=True).exists()


def new_secret() -> bytes:
    """A fresh TOTP secret: 20 random bytes (django-otp's default length)."""
    return secrets.token_bytes(20)


@sensitive_variables()
def seal_pending(secret: bytes) -> str:
    """The pending enrollment secret as the session may keep it (sealed: sessions live in the DB)."""
    return sealing.seal(secret, sealing.ENROLLMENT)


@sensitive_variables()
def unseal_pending(sealed: str | None) -> bytes | None:
    """The pending secret back from the session; None when absent or sealed under a retired key."""
    if not sealed:
        return None
    try:
        return sealing.unseal(sealed, sealing.ENROLLMENT)
    except sealing.SealError:
        return None


@sensitive_variables()
def secret_base32(secret: bytes) -> str:
    """The secret as a person types it into an authenticator app (base32, groups of four)."""
    text = b32encode(secret).decode()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


@sensitive_variables()
def provisioning_uri(user, secret: bytes) -> str:
    """The otpauth:// URI an authenticator app reads from the QR code."""
    device = AuthenticatorDevice(user=user, name=TOTP_DEVICE_NAME)
    device.set_key(secret)
    return device.config_url


@sensitive_variables()
def qr_svg(uri: str) -> str:
    """The QR code of `uri` as inline SVG, rendered here (no CDN, no external service).

    Only a viewBox, no width/height: the page's CSS sizes it without cropping.
    """
    import segno

    out = BytesIO()
    segno.make(uri, error="m").save(out, kind="svg", border=2, xmldecl=False, omitsize=True, dark="#000")
    return out.getvalue().decode()


@sensitive_variables()
def _new_backup_code() -> str:
    return "".join(secrets.choice(_BACKUP_ALPHABET) for _ in range(10))


@sensitive_variables()
def format_backup_code(code: str) -> str:
    return f"{code[:5]}-{code[5:]}"


@sensitive_variables()
def _issue_backup_codes(user) -> list[str]:
    """Replace the user's backup codes with OPS_BACKUP_CODE_COUNT new ones; return them (shown once).

    Only their keyed hashes are stored.
    """
    BackupCodeDevice.objects.filter(user=user).delete()
    device = BackupCodeDevice.objects.create(
        user=user, name=BACKUP_DEVICE_NAME, confirmed=True, key_id=sealing.key_id(sealing.BACKUP_CODE)
    )
    codes = [_new_backup_code() for _ in range(settings.OPS_BACKUP_CODE_COUNT)]
    BackupCode.objects.bulk_create(
        [BackupCode(device=device, digest=sealing.keyed_digest(code, sealing.BACKUP_CODE)) for code in codes]
    )
    return [format_backup_code(code) for code in codes]


@sensitive_variables()
def _store_authenticator(user, secret: bytes, last_t: int = -1) -> AuthenticatorDevice:
    AuthenticatorDevice.objects.filter(user=user).delete()
    device = AuthenticatorDevice(user=user, name=TOTP_DEVICE_NAME, confirmed=True, last_t=last_t)
    device.set_key(secret)
    device.save()
    return device


def _audit(action: AuditAction, outcome: AuditOutcome, actor: Actor, user, message: str, **detail) -> None:
    append_event(
        action=action,
        outcome=outcome,
        actor=actor,
        message=message,
        detail={"user": user.get_username(), "user_id": user.pk, **detail},
    )


@sensitive_variables()
def confirm_enrollment(actor: Actor, user, secret: bytes, token: str) -> tuple[AuthenticatorDevice, list[str]]:
    """Confirm a pending secret with one token: store the device, issue backup codes.

    Returns the new device and the backup codes (the only time they exist in
    clear outside the database). Raises TwoFactorError (audited as a rejected
    token) when the token does not match, or when the user already has a device.
    """
    if has_device(user):
        raise TwoFactorError(f"{user.get_username()} already has an authenticator; reset it first.", reason="enrolled")
    totp = TOTP(secret, step=30, digits=6)
    token = normalize_token(token)
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
        device = _store_authenticator(user, secret, last_t=totp.t())
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


@sensitive_variables()
def enroll_headless(actor: Actor, user) -> tuple[AuthenticatorDevice, list[str]]:
    """Create a confirmed TOTP device and backup codes without a token (`otp_enroll`).

    Whoever runs the command holds the server; the URI they pass on is the
    secret. Raises TwoFactorError when the user already has a device.
    """
    if has_device(user):
        raise TwoFactorError(
            f"{user.get_username()} already has an authenticator; run otp_reset first.", reason="enrolled"
        )
    with transaction.atomic():
        device = _store_authenticator(user, new_secret())
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


@sensitive_variables()
def verify(actor: Actor, user, token: str) -> Verified:
    """Check a TOTP token or a backup code for `user`; a backup code is used up.

    Six digits are checked against the authenticator, anything else against the
    backup codes, so a backup code never counts as a failure of the
    authenticator's own throttle. Raises TwoFactorError (audited) when refused,
    including while django-otp's per-device back-off is in force.
    """
    token = normalize_token(token)
    kind = "totp" if _TOTP_RE.match(token) else "backup code"
    model = AuthenticatorDevice if kind == "totp" else BackupCodeDevice
    unreadable = False
    with transaction.atomic():
        device = model.objects.devices_for_user(user, confirmed=True).select_for_update().first()
        allowed = device is not None and device.verify_is_allowed()[0]
        try:
            ok = bool(allowed and token and device.verify_token(token))
        except sealing.SealError:  # sealed under a key no longer configured
            ok, unreadable = False, True
    if not ok:
        reason = "unreadable" if unreadable else "throttled" if device is not None and not allowed else "token"
        _audit(
            AuditAction.OTP_TOKEN_REJECTED,
            AuditOutcome.REFUSED,
            actor,
            user,
            f"{kind} refused" + _REFUSAL_NOTES.get(reason, ""),
            stage="sign-in",
            kind=kind,
        )
        raise TwoFactorError(_REFUSAL_TEXT[reason], reason=reason)
    left = BackupCode.objects.filter(device__user=user).count()
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


@dataclass(frozen=True)
class RekeyReport:
    """What `rekey` found (and, unless checking, did). Usernames only, never a secret."""

    resealed: int  # authenticator keys moved (or, when checking, to move) to the current SECRET_KEY
    current: int  # already under the current key
    unreadable: list[str]  # whose authenticator no configured key opens: reset them
    backup_codes_on_old_key: list[str]  # hashed under a fallback: they work while it stays configured
    backup_codes_unusable: list[str]  # hashed under a key no longer configured: they no longer work

    @property
    def needs_attention(self) -> bool:
        return bool(self.resealed or self.unreadable or self.backup_codes_on_old_key or self.backup_codes_unusable)


def rekey(actor: Actor, *, check: bool = False) -> RekeyReport:
    """Re-encrypt every authenticator key under the current SECRET_KEY (after a rotation). Audited.

    Keys sealed under a SECRET_KEY_FALLBACKS entry are opened and sealed again;
    each device is locked while it is rewritten, so two runs at once (or a
    sign-in meanwhile) never lose an update. Backup codes are only hashes and
    cannot be re-hashed: the report names whose codes still depend on a
    fallback (or on a key that is gone) so they can be issued new ones by a
    reset. With `check=True` nothing is written and nothing is audited.
    """
    resealed, current, unreadable = 0, 0, []
    for pk in AuthenticatorDevice.objects.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            device = AuthenticatorDevice.objects.select_for_update().select_related("user").filter(pk=pk).first()
            if device is None:  # reset meanwhile
                continue
            if sealing.is_current(device.sealed_key, sealing.TOTP_KEY):
                current += 1
                continue
            try:
                sealed = sealing.reseal(device.sealed_key, sealing.TOTP_KEY)
            except sealing.SealError:
                unreadable.append(device.user.get_username())
                continue
            resealed += 1
            if not check:
                AuthenticatorDevice.objects.filter(pk=pk).update(sealed_key=sealed)
    on_old, unusable = [], []
    current_id = sealing.key_id(sealing.BACKUP_CODE)
    for backup in BackupCodeDevice.objects.exclude(key_id=current_id).select_related("user").order_by("pk"):
        known = sealing.digest_key(backup.key_id, sealing.BACKUP_CODE) is not None
        (on_old if known else unusable).append(backup.user.get_username())
    report = RekeyReport(resealed, current, unreadable, on_old, unusable)
    if not check:
        append_event(
            action=AuditAction.OTP_REKEYED,
            outcome=AuditOutcome.FAILURE if unreadable else AuditOutcome.SUCCESS,
            actor=actor,
            message=f"2FA keys re-encrypted under the current SECRET_KEY: {resealed} moved, {current} already current"
            + (f", {len(unreadable)} unreadable" if unreadable else ""),
            detail={
                "resealed": resealed,
                "current": current,
                "unreadable": unreadable,
                "backup_codes_on_old_key": on_old,
                "backup_codes_unusable": unusable,
            },
        )
    return report


__all__ = [
    "RekeyReport",
    "TwoFactorError",
    "Verified",
    "confirm_enrollment",
    "enroll_headless",
    "has_device",
    "is_required",
    "new_secret",
    "provisioning_uri",
    "qr_svg",
    "rekey",
    "reset_devices",
    "seal_pending",
    "secret_base32",
    "unseal_pending",
    "verify",
]
