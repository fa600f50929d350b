"""The audit keys, all held outside the console's database.

- The **MAC key** (HMAC-SHA256): `OPS_AUDIT_KEY`, or the file `OPS_AUDIT_KEY_FILE`
  names. Retired keys stay usable for verification, one per line, in
  `OPS_AUDIT_PREVIOUS_KEYS_FILE`. A key is known by its id, `k-` and the first 12
  hex digits of SHA-256 over a fixed label and the key: the id is stored with
  every event and says nothing about the key.
- The **checkpoint signing key** (Ed25519, PEM PKCS#8): `OPS_AUDIT_SIGNING_KEY_FILE`.
  A host that only verifies may hold just the public key, `OPS_AUDIT_PUBLIC_KEY_FILE`.

With DEBUG=1 and no key configured, both keys are derived from SECRET_KEY (ids
start with `dev-`), so the quick start works. Such keys protect nothing against
whoever can read the settings; `check --deploy` refuses DEBUG=0 without real
keys (opsapp.E040, E042). Key material is never logged, never put in the
database and never in an error message.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings

from opsapp.services.errors import AuditError

MIN_KEY_LENGTH = 32
_ID_LABEL = b"ops-console audit key id\0"
_DEV_MAC_LABEL = b"ops-console audit MAC key (DEBUG=1 only)"
_DEV_SIGNING_LABEL = b"ops-console audit checkpoint signing key (DEBUG=1 only)"


@dataclass(frozen=True)
class MacKey:
    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"MacKey({self.key_id!r})"


def key_id_of(secret: bytes, *, prefix: str = "k-") -> str:
    return prefix + hashlib.sha256(_ID_LABEL + secret).hexdigest()[:12]


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"cannot read {what} {path!r}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None


def _dev_secret(label: bytes) -> bytes | None:
    if not settings.DEBUG or not settings.SECRET_KEY:
        return None
    return hmac.new(settings.SECRET_KEY.encode(), label, hashlib.sha256).digest()


def configured_mac_secret() -> str:
    """The configured key text ('' when none); raises AuditError if its file is unreadable."""
    if settings.OPS_AUDIT_KEY:
        return settings.OPS_AUDIT_KEY
    if settings.OPS_AUDIT_KEY_FILE:
        return _read_secret(settings.OPS_AUDIT_KEY_FILE, "OPS_AUDIT_KEY_FILE")
    return ""


def current_mac_key() -> MacKey:
    """The key new events are MACed with. Raises AuditError when there is none (DEBUG off, nothing set)."""
    text = configured_mac_secret()
    if text:
        if len(text) < MIN_KEY_LENGTH:
            raise AuditError(f"the audit key must be at least {MIN_KEY_LENGTH} characters (opsapp.E041)")
        secret = text.encode()
        return MacKey(key_id_of(secret), secret)
    dev = _dev_secret(_DEV_MAC_LABEL)
    if dev is None:
        raise AuditError("no audit key: set OPS_AUDIT_KEY_FILE (or OPS_AUDIT_KEY); see opsapp.E040")
    return MacKey(key_id_of(dev, prefix="dev-"), dev)


def verification_keys() -> dict[str, bytes]:
    """Every key that may have MACed a stored event, by id: the current one and the retired ones."""
    keys: dict[str, bytes] = {}
    try:
        current = current_mac_key()
        keys[current.key_id] = current.secret
    except AuditError:
        pass
    if settings.OPS_AUDIT_PREVIOUS_KEYS_FILE:
        text = _read_secret(settings.OPS_AUDIT_PREVIOUS_KEYS_FILE, "OPS_AUDIT_PREVIOUS_KEYS_FILE")
        for line in text.splitlines():
            if line.strip():
                secret = line.strip().encode()
                keys[key_id_of(secret)] = secret
    return keys


def signing_key() -> Ed25519PrivateKey | None:
    """The checkpoint signing key, or None when this host does not sign. Raises AuditError on a bad file."""
    path = settings.OPS_AUDIT_SIGNING_KEY_FILE
    if path:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except OSError as exc:
            raise AuditError(f"cannot read OPS_AUDIT_SIGNING_KEY_FILE {path!r}: {exc.strerror}") from None
        except (ValueError, TypeError):
            raise AuditError(f"OPS_AUDIT_SIGNING_KEY_FILE {path!r} is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditError(f"OPS_AUDIT_SIGNING_KEY_FILE {path!r} is not an Ed25519 key")
        return key
    dev = _dev_secret(_DEV_SIGNING_LABEL)
    return Ed25519PrivateKey.from_private_bytes(dev) if dev is not None else None


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM. Raises AuditError."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise AuditError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError("not an Ed25519 public key")
    return key


def public_key() -> Ed25519PublicKey | None:
    """The key checkpoints are checked with: OPS_AUDIT_PUBLIC_KEY_FILE, else the signing key's own."""
    path = settings.OPS_AUDIT_PUBLIC_KEY_FILE
    if path:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise AuditError(f"cannot read OPS_AUDIT_PUBLIC_KEY_FILE {path!r}: {exc.strerror}") from None
        try:
            return load_public_key(data)
        except AuditError as exc:
            raise AuditError(f"OPS_AUDIT_PUBLIC_KEY_FILE {path!r}: {exc}") from None
    private = signing_key()
    return private.public_key() if private is not None else None


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
