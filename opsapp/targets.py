"""The configured targets: parsing, validation and password masking.

`settings.OPS_TARGETS` holds raw strings from the environment; this module
turns them into `TargetConfig` objects. It never raises on a malformed value
at import time: `validate_target` returns problems for the system checks, and
`get_target` raises `TargetNotConfigured` / `TargetMisconfigured` for callers.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.views.debug import SafeExceptionReporterFilter

from opsapp.services.db_url import parse_url
from opsapp.services.errors import TargetMisconfigured, TargetNotConfigured
from opsapp.targets_file import where

ISOLATION_LEVELS = ("READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")
SUPPORTED_DIALECTS = ("postgresql", "sqlite")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# The password runs to the *last* '@' of the URL, as SQLAlchemy's make_url reads it
# ("u:p@ss@host" has the password "p@ss"): stopping at the first '@' would leak the rest.
_PASSWORD_RE = re.compile(r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<password>\S*)(?P<at>@)")
# A whole value that is one URL may hold a password with spaces (make_url accepts it).
_WHOLE_URL_RE = re.compile(
    r"^(?P<prefix>\s*[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<password>.*)(?P<at>@[^@]*)$", re.DOTALL
)


def mask_url(text: str | None) -> str:
    """Replace every password in `scheme://user:password@host` forms with `***`.

    Works on free text too (driver error messages quote the DSN), so it is
    applied to everything shown, logged or audited.
    """
    if not text:
        return text or ""
    text = str(text)
    if "://" not in text and "password" not in text.casefold():
        # Nothing below can match (each pattern needs one of the two): the audit log masks every
        # string of a 200-step plan's detail, so the common case skips the regexes.
        return text
    whole = _WHOLE_URL_RE.match(text)
    if whole and re.search(r"\s", whole["password"]) and "\n" not in text:
        text = f"{whole['prefix']}***{whole['at']}"
    masked = _PASSWORD_RE.sub(lambda m: f"{m['prefix']}***{m['at']}", text)
    # libpq-style "password=secret" in DSNs and error messages.
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", masked, flags=re.IGNORECASE)


class _MaskedRepr:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class MaskingExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's error pages and reports (DEFAULT_EXCEPTION_REPORTER_FILTER): target passwords masked.

    Django hides settings named like *PASS*/*KEY*, but OPS_TARGETS holds whole
    URLs, and a frame's locals may hold a URL string too.
    """

    hidden_settings = re.compile("API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL", flags=re.IGNORECASE)

    def get_traceback_frame_variables(self, request, tb_frame):
        masked = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            text = value if isinstance(value, str) else repr(value)
            clean = mask_url(text)
            masked.append((name, value if clean == text else (clean if isinstance(value, str) else _MaskedRepr(clean))))
        return masked


@dataclass(frozen=True)
class TargetConfig:
    """One managed database plus its Alembic script directory."""

    name: str
    url: str = field(repr=False)
    alembic_ini: Path
    isolation_level: str = "SERIALIZABLE"
    # From OPS_TARGETS_FILE only (e.g. {"region": "eu", "tier": "prod"}).
    tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def dialect(self) -> str:
        return self.url.split(":", 1)[0].split("+", 1)[0].lower()

    @property
    def is_postgresql(self) -> bool:
        return self.dialect in ("postgresql", "postgres")

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with the psycopg 3 driver made explicit for PostgreSQL."""
        scheme, rest = self.url.split("://", 1)
        if scheme in ("postgres", "postgresql"):
            return f"postgresql+psycopg://{rest}"
        return self.url

    @property
    def script_location(self) -> Path | None:
        """The `script_location` named by the ini file, resolved like Alembic does."""
        parser = configparser.ConfigParser(defaults={"here": str(self.alembic_ini.parent.resolve())})
        try:
            parser.read(self.alembic_ini)
            location = parser.get("alembic", "script_location")
        except (configparser.Error, OSError):
            return None
        path = Path(location)
        if not path.is_absolute():
            path = self.alembic_ini.parent / path
        return path


def configured_names() -> list[str]:
    return list(settings.OPS_TARGETS)


def _raw(name: str) -> dict:
    try:
        return settings.OPS_TARGETS[name]
    except KeyError:
        raise TargetNotConfigured(
            f"Target {name!r} is not configured. Configured targets: {', '.join(settings.OPS_TARGETS) or 'none'}.",
            target=name,
        ) from None


@dataclass(frozen=True)
class _IniFacts:
    """What validation needs to know of one alembic.ini (shared by the targets naming it)."""

    is_file: bool
    script_location: Path | None
    has_env_py: bool
    resolved: Path


def _ini_facts(ini: str, cache: dict[str, _IniFacts] | None) -> _IniFacts:
    if cache is not None and ini in cache:
        return cache[ini]
    path = Path(ini)
    is_file = path.is_file()
    location = TargetConfig(name="-", url="", alembic_ini=path).script_location if is_file else None
    facts = _IniFacts(is_file, location, bool(location and (location / "env.py").is_file()), path.resolve())
    if cache is not None:
        cache[ini] = facts
    return facts


def validate_target(name: str, *, ini_cache: dict[str, _IniFacts] | None = None) -> list[tuple[str, str]]:
    """Return (check id, message) pairs for everything wrong with a target.

    `ini_cache` (a dict the caller keeps for one batch) reads each alembic.ini
    once for many targets: a fleet of 500 shares a few.
    """
    problems: list[tuple[str, str]] = []
    raw = settings.OPS_TARGETS.get(name, {})
    if not NAME_RE.match(name):
        problems.append(
            ("opsapp.E006", f"Target name {name!r} must start with a letter and hold only letters, digits and _.")
        )
    url = (raw.get("URL") or "").strip()
    if not url:
        fix = f"set {raw['URL_ENV']}" if raw.get("URL_ENV") else f"set OPS_TARGET_{name.upper()}_URL"
        problems.append(("opsapp.E001", f"Target {name!r}{where(raw, 'url_env')} has no URL: {fix}."))
    else:
        try:
            parsed = parse_url(url)
            if parsed.get_backend_name() not in SUPPORTED_DIALECTS and not url.startswith("postgres://"):
                raise ValueError(f"unsupported database {parsed.get_backend_name()!r} (use postgresql:// or sqlite://)")
            if parsed.get_backend_name() == "postgresql" and not parsed.database:
                raise ValueError("no database name")
            if parsed.get_backend_name() == "sqlite" and not parsed.database:
                raise ValueError("no database file")
        except Exception as exc:  # noqa: BLE001 - any parse failure is a configuration problem
            problems.append(
                (
                    "opsapp.E002",
                    f"Target {name!r}{where(raw, 'url_env' if raw.get('URL_ENV') else 'url')} has a malformed URL {mask_url(url)!r}: {mask_url(str(exc))}.",
                )
            )
    ini = (raw.get("ALEMBIC_INI") or "").strip()
    if not ini:
        problems.append(
            (
                "opsapp.E003",
                f"Target {name!r}{where(raw, 'alembic_ini')} has no alembic.ini: "
                + ('add alembic_ini = "...".' if raw.get("SOURCE") else f"set OPS_TARGET_{name.upper()}_ALEMBIC_INI."),
            )
        )
    elif not (facts := _ini_facts(ini, ini_cache)).is_file:
        problems.append(
            ("opsapp.E003", f"Target {name!r}{where(raw, 'alembic_ini')}: alembic.ini {ini!r} does not exist.")
        )
    else:
        location = facts.script_location
        if location is None:
            problems.append(
                (
                    "opsapp.E004",
                    f"Target {name!r}{where(raw, 'alembic_ini')}: {ini!r} has no [alembic] script_location.",
                )
            )
        elif not facts.has_env_py:
            problems.append(
                (
                    "opsapp.E004",
                    f"Target {name!r}{where(raw, 'alembic_ini')}: script directory {str(location)!r} is missing or has no env.py.",
                )
            )
    level = (raw.get("ISOLATION_LEVEL") or "SERIALIZABLE").strip().upper().replace("_", " ")
    if level not in ISOLATION_LEVELS:
        problems.append(
            (
                "opsapp.E005",
                f"Target {name!r}{where(raw, 'isolation_level')}: unknown isolation level {level!r}; use one of {', '.join(ISOLATION_LEVELS[1:])}.",
            )
        )
    elif level == "READ UNCOMMITTED":
        problems.append(
            (
                "opsapp.E005",
                f"Target {name!r}{where(raw, 'isolation_level')}: isolation level READ UNCOMMITTED is refused; operations run at READ COMMITTED or stricter.",
            )
        )
    return problems


def get_target(name: str, *, ini_cache: dict[str, _IniFacts] | None = None) -> TargetConfig:
    """Return the validated configuration of target `name`.

    Raises TargetNotConfigured for an unknown name and TargetMisconfigured
    (with every problem listed) for a target the system checks would reject.
    `ini_cache`: as for validate_target.
    """
    raw = _raw(name)
    problems = validate_target(name, ini_cache=ini_cache)
    if problems:
        raise TargetMisconfigured("; ".join(msg for _, msg in problems), target=name)
    level = (raw.get("ISOLATION_LEVEL") or "SERIALIZABLE").strip().upper().replace("_", " ")
    return TargetConfig(
        name=name,
        url=raw["URL"].strip(),
        alembic_ini=_ini_facts(raw["ALEMBIC_INI"], ini_cache).resolved,
        isolation_level=level,
        tags=dict(raw.get("TAGS") or {}),
    )


def all_targets() -> list[TargetConfig]:
    """Every configured target that passes validation."""
    result = []
    for name in configured_names():
        try:
            result.append(get_target(name))
        except (TargetMisconfigured, TargetNotConfigured):
            continue
    return result
