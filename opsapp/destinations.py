"""Restore destinations: named databases a queued restore may write into.

A restore run by a worker must not carry a URL through the queue (a URL may
hold a password), so the operator names a destination and the worker reads
its URL here, from the environment:

    OPS_RESTORE_DESTINATIONS=scratch,staging
    OPS_RESTORE_DESTINATION_SCRATCH_URL=postgresql://restore@db2/shop_restored
    OPS_RESTORE_DESTINATION_STAGING_URL_FILE=/run/secrets/staging_restore_url

Like a target's URL, a destination's URL is never stored in the console's
database and is always shown masked. `validate_destination` returns problems
for the system checks (opsapp.E110-E115); `get_destination` raises
DestinationNotConfigured / DestinationMisconfigured for callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from opsapp.services.errors import OpsError
from opsapp.targets import NAME_RE, all_targets, mask_url

SCHEMES = ("postgresql", "postgres", "sqlite")


class DestinationNotConfigured(OpsError):
    """No restore destination of that name in OPS_RESTORE_DESTINATIONS."""


class DestinationMisconfigured(OpsError):
    """The destination's settings fail validation (see opsapp.checks)."""


@dataclass(frozen=True)
class DestinationConfig:
    name: str
    url: str = field(repr=False)

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def is_postgresql(self) -> bool:
        return self.url.split(":", 1)[0].split("+", 1)[0].lower() in ("postgresql", "postgres")


def destination_names() -> list[str]:
    return list(getattr(settings, "OPS_RESTORE_DESTINATIONS", {}) or {})


def _env_prefix(name: str) -> str:
    return f"OPS_RESTORE_DESTINATION_{name.upper()}"


def _read_url(name: str) -> tuple[str, list[tuple[str, str]]]:
    """(URL, problems): from `..._URL`, or the first line of the file named by `..._URL_FILE`."""
    raw = settings.OPS_RESTORE_DESTINATIONS.get(name, {})
    url, path = (raw.get("URL") or "").strip(), (raw.get("URL_FILE") or "").strip()
    prefix = _env_prefix(name)
    if url and path:
        return "", [("opsapp.E111", f"Restore destination {name!r}: set {prefix}_URL or {prefix}_URL_FILE, not both.")]
    if path:
        try:
            url = Path(path).read_text().strip()
        except OSError as exc:
            return "", [
                (
                    "opsapp.E112",
                    f"Restore destination {name!r}: {prefix}_URL_FILE {path!r} cannot be read: {exc.strerror or exc}.",
                )
            ]
        if not url:
            return "", [("opsapp.E112", f"Restore destination {name!r}: {prefix}_URL_FILE {path!r} is empty.")]
    if not url:
        return "", [
            (
                "opsapp.E111",
                f"Restore destination {name!r} has no URL: set {prefix}_URL (or {prefix}_URL_FILE, a file holding it).",
            )
        ]
    return url, []


def _same_url(a: str, b: str) -> bool:
    from opsapp.services.snapshots.restore import same_database

    return same_database(a, b)


def _console_database_url() -> str | None:
    db = settings.DATABASES["default"]
    if "sqlite" in db["ENGINE"]:
        return f"sqlite:///{db['NAME']}"
    if "postgresql" in db["ENGINE"]:
        return f"postgresql://{db.get('HOST') or 'localhost'}:{db.get('PORT') or 5432}/{db['NAME']}"
    return None


def validate_destination(name: str) -> list[tuple[str, str]]:
    """(check id, message) for everything wrong with destination `name`; never connects to a database."""
    if not NAME_RE.match(name):
        return [
            (
                "opsapp.E110",
                f"Restore destination name {name!r} must start with a letter and hold only letters, digits and _.",
            )
        ]
    url, problems = _read_url(name)
    if problems:
        return problems
    from opsapp.services.db_url import parse_url as make_url  # no SQLAlchemy import in every command's checks

    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
        if parsed.get_backend_name() not in SCHEMES:
            raise ValueError(f"unsupported database {parsed.get_backend_name()!r} (use postgresql:// or sqlite:///)")
        if not parsed.database:
            raise ValueError("no database name" if parsed.get_backend_name() != "sqlite" else "no database file")
    except Exception as exc:  # noqa: BLE001 - any parse failure is a configuration problem
        return [
            (
                "opsapp.E113",
                f"Restore destination {name!r} has a malformed URL {mask_url(url)!r}: {mask_url(str(exc))}.",
            )
        ]
    for target in all_targets():
        if _same_url(target.url, url):
            return [
                (
                    "opsapp.E114",
                    f"Restore destination {name!r} is the database of target {target.name!r}: a restore never "
                    "writes into a configured target. Name a new, empty database.",
                )
            ]
    console = _console_database_url()
    if console and _same_url(console, url):
        return [("opsapp.E115", f"Restore destination {name!r} is the console's own database.")]
    return []


def get_destination(name: str) -> DestinationConfig:
    """The validated destination `name`. Raises DestinationNotConfigured or DestinationMisconfigured."""
    if name not in destination_names():
        configured = ", ".join(destination_names()) or "none (set OPS_RESTORE_DESTINATIONS)"
        raise DestinationNotConfigured(
            f"Restore destination {name!r} is not configured. Configured destinations: {configured}.",
            reason="no_destination",
        )
    problems = validate_destination(name)
    if problems:
        raise DestinationMisconfigured("; ".join(msg for _, msg in problems), reason="bad_destination")
    url, _ = _read_url(name)
    return DestinationConfig(name=name, url=url)


def all_destinations() -> list[DestinationConfig]:
    """Every configured destination that passes validation, in configuration order."""
    found = []
    for name in destination_names():
        try:
            found.append(get_destination(name))
        except OpsError:
            continue
    return found
