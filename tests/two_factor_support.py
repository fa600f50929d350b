"""Helpers for tests with two-factor sign-in on: real TOTP tokens from a device's secret.

Tokens are computed by hand (RFC 6238: HMAC-SHA1 over the 30-second step
counter, dynamic truncation, 6 digits), as a person's phone would, from the
secret the enrollment page shows or from the stored device.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time

from django_otp import DEVICE_ID_SESSION_KEY

from opsapp.models import AuthenticatorDevice

STEP = 30


def totp(secret: bytes, step_offset: int = 0, at: float | None = None) -> str:
    """The RFC 6238 token for `secret` at time `at` (default now), `step_offset` steps later."""
    counter = int((time.time() if at is None else at) // STEP) + step_offset
    digest = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def secret_from_text(text: str) -> bytes:
    """The secret as the enrollment page shows it (base32 in groups of four) -> bytes."""
    return base64.b32decode(text.replace(" ", "").upper())


def fresh_token(device: AuthenticatorDevice) -> str:
    """A token the device accepts now: a step after the last one it verified (replays are refused)."""
    device.refresh_from_db()
    now_step = int(time.time() // STEP)
    offset = max(0, device.last_t + 1 - now_step)
    if offset > 1:  # beyond the tolerance of one step: wait for the clock
        time.sleep((offset - 1) * STEP)
        offset = 1
    return totp(device.bin_key, offset)


def make_device(user) -> AuthenticatorDevice:
    """A confirmed authenticator with a fresh random key (sealed like an enrolled one)."""
    device = AuthenticatorDevice(user=user, name="authenticator", confirmed=True)
    device.set_key(secrets.token_bytes(20))
    device.save()
    return device


def verified_login(client, user) -> AuthenticatorDevice:
    """Log `user` in with a session that has passed the second factor (like force_login for 2FA)."""
    device = AuthenticatorDevice.objects.filter(user=user, confirmed=True).first() or make_device(user)
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()
    return device
