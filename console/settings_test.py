"""Test settings: the real suite needs a PostgreSQL server.

It uses DATABASE_URL when set, else postgres://postgres@127.0.0.1:5432/ops_console
(trust auth, as on the CI machine). pytest-django creates and drops
`test_ops_console` (plus one per xdist worker). Throwaway target databases are
created and dropped on the same server by the fixtures in tests/conftest.py.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ops_console")
os.environ.setdefault("OPS_IGNORE_DOTENV", "1")
os.environ.setdefault("OPS_VAR_DIR", tempfile.mkdtemp(prefix="ops-test-var-"))

from console.settings import *  # noqa: E402,F403

EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
if os.environ.get("OPS_TEST_MAIL_DIR"):
    # A worker process started by a test writes its mail where the test reads it (tests/operations_support.py).
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = os.environ["OPS_TEST_MAIL_DIR"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
AXES_ENABLED = False

# whitenoise warns on every request when STATIC_ROOT is missing.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405

# Gate "rehearsal" off except in the tests that turn it on (tests/test_rehearsal*.py).
OPS_REQUIRE_REHEARSAL = False
# Django runs tests with DEBUG off, so the development audit keys are not derived: the suite
# has its own (throwaway, made here, never a real secret).
OPS_AUDIT_KEY = "test-suite-audit-mac-key-not-a-secret-0123456789"


def _test_signing_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = VAR_DIR / "audit-signing-key.pem"  # noqa: F405
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.write_bytes(pem)
    return str(path)


OPS_AUDIT_SIGNING_KEY_FILE = _test_signing_key()
