"""audit_keys --generate --dir DIR | --public-key: the audit MAC key and the checkpoint signing key.

`--generate` writes three new files into DIR (refusing to overwrite any):
audit-mac.key (0600, for OPS_AUDIT_KEY_FILE), audit-signing.pem (0600, Ed25519,
for OPS_AUDIT_SIGNING_KEY_FILE) and audit-public.pem (0644, for the auditors and
for OPS_AUDIT_PUBLIC_KEY_FILE), then prints the settings to add and the public
key. `--public-key` prints the public key of the configured signing key.
Secrets are never printed.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management.base import BaseCommand, CommandError

from opsapp.services.audit.keys import public_key, public_key_id, public_key_pem
from opsapp.services.errors import AuditError


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # whatever the umask


class Command(BaseCommand):
    help = "Generate the audit keys (MAC key, Ed25519 checkpoint key) or print the checkpoint public key."
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--generate", action="store_true", help="create new key files in --dir")
        action.add_argument("--public-key", action="store_true", help="print the configured public key (PEM)")
        parser.add_argument("--dir", metavar="DIR", help="where --generate writes the key files")

    def handle(self, *args, **options) -> None:
        if options["public_key"]:
            try:
                key = public_key()
            except AuditError as exc:
                raise CommandError(str(exc)) from exc
            if key is None:
                raise CommandError("no checkpoint key configured: set OPS_AUDIT_SIGNING_KEY_FILE")
            self.stdout.write(public_key_pem(key).decode(), ending="")
            return
        if not options["dir"]:
            raise CommandError("--generate needs --dir DIR", returncode=2)
        directory = Path(options["dir"])
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a directory", returncode=2)
        private = Ed25519PrivateKey.generate()
        files = {
            "audit-mac.key": (secrets.token_urlsafe(48).encode() + b"\n", 0o600),
            "audit-signing.pem": (
                private.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
                0o600,
            ),
            "audit-public.pem": (public_key_pem(private.public_key()), 0o644),
        }
        existing = [name for name in files if (directory / name).exists()]
        if existing:
            raise CommandError(f"refusing to overwrite {', '.join(existing)} in {directory}")
        for name, (data, mode) in files.items():
            _write_new(directory / name, data, mode)
        absolute = directory.resolve()
        self.stdout.write(
            f"OPS_AUDIT_KEY_FILE={absolute / 'audit-mac.key'}\n"
            f"OPS_AUDIT_SIGNING_KEY_FILE={absolute / 'audit-signing.pem'}\n"
            f"# Hand this public key (id {public_key_id(private.public_key())}) to the auditors:\n"
            + public_key_pem(private.public_key()).decode(),
            ending="",
        )
