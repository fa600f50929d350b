"""Secrets at rest in the console's database: sealed (encrypted) or keyed-hashed.

Keys are derived with HKDF-SHA256 from Django's SECRET_KEY, one per purpose
(the `info` of HKDF), so a key for TOTP secrets never encrypts a session value
and the raw SECRET_KEY never touches a secret directly. Rotation follows
Django's own: put the old SECRET_KEY into SECRET_KEY_FALLBACKS, set the new
one, and what was sealed under an old key still opens (`unseal`) or matches
(`digest_matches`); `reseal` moves a value to the current key
(`manage.py otp_rekey`).

- `seal` / `unseal`: Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`),
  a MultiFernet over the current key and the fallbacks.
- `keyed_digest` / `digest_matches`: HMAC-SHA256, compared in constant time;
  for values that are only ever checked, never read back (backup codes).

Raises SealError (an OpsError) when no configured key opens a value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from opsapp.services.errors import OpsError

TOTP_KEY = "totp key"
ENROLLMENT = "pending enrollment secret"
BACKUP_CODE = "backup code"
_SALT = b"opsapp 2fa at rest v1"


class SealError(OpsError):
    """No configured key (SECRET_KEY or a fallback) opens this value."""


@sensitive_variables()
def _secret_keys() -> list[str]:
    """SECRET_KEY first (it seals), then SECRET_KEY_FALLBACKS (they only open)."""
    return [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]


@sensitive_variables()
def _derive(secret_key: str, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=purpose.encode()).derive(secret_key.encode())


@sensitive_variables()
def _fernets(purpose: str) -> list[Fernet]:
    return [Fernet(base64.urlsafe_b64encode(_derive(key, purpose))) for key in _secret_keys()]


@sensitive_variables()
def seal(value: bytes, purpose: str) -> str:
    """`value` encrypted under the current key for `purpose`, as ASCII text."""
    return _fernets(purpose)[0].encrypt(value).decode()


@sensitive_variables()
def unseal(token: str, purpose: str) -> bytes:
    """The value `seal` sealed, opened with the current key or a fallback. Raises SealError."""
    try:
        return MultiFernet(_fernets(purpose)).decrypt(token.encode())
    except (InvalidToken, ValueError, TypeError) as exc:
        raise SealError(
            f"no configured key opens this {purpose} (was SECRET_KEY changed without keeping the old one "
            "in SECRET_KEY_FALLBACKS?)",
            reason="unreadable",
        ) from exc


@sensitive_variables()
def is_current(token: str, purpose: str) -> bool:
    """True when `token` is sealed under the current SECRET_KEY (nothing for otp_rekey to do)."""
    try:
        _fernets(purpose)[0].decrypt(token.encode())
    except (InvalidToken, ValueError, TypeError):
        return False
    return True


@sensitive_variables()
def reseal(token: str, purpose: str) -> str:
    """`token` sealed again under the current key. Raises SealError when no key opens it."""
    return seal(unseal(token, purpose), purpose)


@sensitive_variables()
def key_id(purpose: str, secret_key: str | None = None) -> str:
    """A short public name of the derived key (which key hashed a value), not the key itself."""
    derived = _derive(secret_key or settings.SECRET_KEY, purpose)
    return hmac.new(derived, b"key id", hashlib.sha256).hexdigest()[:16]


@sensitive_variables()
def keyed_digest(value: str, purpose: str) -> str:
    """HMAC-SHA256 of `value` under the current key for `purpose`, hex."""
    return hmac.new(_derive(settings.SECRET_KEY, purpose), value.encode(), hashlib.sha256).hexdigest()


@sensitive_variables()
def digest_key(key_name: str, purpose: str) -> bytes | None:
    """The derived key whose `key_id` is `key_name` (current or a fallback), or None if retired."""
    for secret_key in _secret_keys():
        if key_id(purpose, secret_key) == key_name:
            return _derive(secret_key, purpose)
    return None


@sensitive_variables()
def digest_matches(value: str, digests: list[str], key: bytes) -> int | None:
    """Index of the digest in `digests` that is HMAC(key, value), or None.

    Every digest is compared (hmac.compare_digest), none skipped on a match, so
    the time taken does not tell which one matched or how much of it did.
    """
    candidate = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    found = None
    for index, digest in enumerate(digests):
        if hmac.compare_digest(candidate, digest) and found is None:
            found = index
    return found
