"""System checks with stable ids, so a bad setting fails `manage.py check` loudly.

opsapp.E001 target without a URL · E002 malformed target URL · E003 missing
alembic.ini · E004 missing script directory / env.py · E005 isolation level
below READ COMMITTED or unknown · E006 bad target name · E007 no targets ·
E008 verification codes would stay on this machine with DEBUG off · E009
EMAIL_URL=filemail:// names a relative directory · W001 (check --deploy)
verification codes would not be e-mailed (DEBUG on).
E080-E086 OPS_TARGETS_FILE: E080 unreadable · E081 not valid TOML (line and column) ·
E082 wrong structure or unknown key · E083 target without a name or declared twice ·
E084 url / url_env missing, both, unset variable or a password in the file · E085 a target
declared both in the file and by environment variables · E086 bad tags. Messages name the
file and line.
E087 OPS_CRON_INTERVALS names an unknown job or a value that is not whole seconds.
E088 OPS_METRICS_ALLOWED_IPS holds an entry that is no address or network · E089
OPS_METRICS_TOKEN shorter than 32 characters.
E020 (check --deploy) two-factor sign-in off with DEBUG off, without OPS_ALLOW_NO_2FA=1.
E040 (check --deploy) no audit MAC key with DEBUG off · E041 audit key unreadable or too short ·
E042 (check --deploy) no checkpoint signing or public key with DEBUG off · E043 checkpoint key
file unreadable or not Ed25519.
E070 OPS_REHEARSAL_URL is not a PostgreSQL URL · E071 OPS_REHEARSAL_RESTORE_JOBS below 1.
E120 OPS_REHEARSAL_RESTORE_MEMORY_MB outside 1..2097151 (PostgreSQL's maintenance_work_mem range).
E030 the task queue is not django-tasks-db's database backend (operations would not be durable) ·
E031 OPS_HEARTBEAT_SECONDS, OPS_JOB_LOCK_WAIT_SECONDS or OPS_SNAPSHOT_RETRIES out of range.
E110-E115 restore destinations (OPS_RESTORE_DESTINATIONS): E110 bad name · E111 no URL, or both
_URL and _URL_FILE · E112 _URL_FILE unreadable or empty · E113 malformed URL · E114 the database of a
configured target · E115 the console's own database.
W044 (database checks, as at `migrate`) the audit search has no pg_trgm index on PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from opsapp.targets import validate_target
from opsapp.targets_file import load_targets_file


@register(Tags.compatibility)
def check_targets(app_configs=None, **kwargs) -> list[Error]:
    errors: list[Error] = []
    if not settings.OPS_TARGETS:
        errors.append(
            Error(
                "OPS_TARGETS names no target.",
                hint="Set OPS_TARGETS=shop,... or OPS_TARGETS_FILE (a TOML file of [[target]] tables).",
                id="opsapp.E007",
            )
        )
    for name in settings.OPS_TARGETS:
        for check_id, message in validate_target(name):
            errors.append(Error(message, id=check_id, obj=f"target {name}"))
    return errors


@register(Tags.compatibility)
def check_targets_file(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E080-E086: the TOML targets file, with the file and line of each problem.

    The values of the file's valid targets (URL, alembic.ini, isolation
    level) are checked by `check_targets` like any target, also with lines.
    """
    path = settings.OPS_TARGETS_FILE
    if not path:
        return []
    loaded = load_targets_file(path, os.environ)
    errors = [Error(p.message, id=f"opsapp.{p.code}", obj=f"OPS_TARGETS_FILE {path}") for p in loaded.problems]
    for name in sorted(set(loaded.targets) & set(settings.OPS_ENV_TARGET_NAMES)):
        line = loaded.targets[name]["LINES"][""]
        errors.append(
            Error(
                f"{path}, line {line}: target {name!r} is declared both in this file and by environment variables "
                f"(OPS_TARGETS / OPS_TARGET_{name.upper()}_*).",
                hint="Declare each target in one place only.",
                id="opsapp.E085",
                obj=f"target {name}",
            )
        )
    return errors


@register(Tags.compatibility)
def check_cron_intervals(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E087: every OPS_CRON_INTERVALS entry names a known job and whole seconds."""
    from opsapp.services.cron.schedule import interval_problems

    return [
        Error(
            f"OPS_CRON_INTERVALS: {problem}.",
            hint="e.g. OPS_CRON_INTERVALS=sync_revisions=300,reconcile=600",
            id="opsapp.E087",
        )
        for problem in interval_problems(getattr(settings, "OPS_CRON_INTERVALS", {}) or {})
    ]


@register(Tags.security)
def check_metrics_access(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E088 / E089: /metrics is protected by a real allow-list and a token that is hard to guess."""
    import ipaddress

    errors = []
    for entry in getattr(settings, "OPS_METRICS_ALLOWED_IPS", []):
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            errors.append(
                Error(
                    f"OPS_METRICS_ALLOWED_IPS: {entry!r} is not an IP address or network.",
                    hint="e.g. OPS_METRICS_ALLOWED_IPS=10.0.0.0/8,192.0.2.7",
                    id="opsapp.E088",
                )
            )
    token = getattr(settings, "OPS_METRICS_TOKEN", "")
    if token and len(token) < 32:
        errors.append(
            Error(
                f"OPS_METRICS_TOKEN is {len(token)} characters long: a short token can be guessed.",
                hint="Use 32 characters or more, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
                id="opsapp.E089",
            )
        )
    return errors


# Backends that keep a code on this machine, with the EMAIL_URL scheme that selects each.
_UNDELIVERED_BACKENDS = {
    "django.core.mail.backends.console.EmailBackend": ("consolemail://", "printed to the console's terminal"),
    "django.core.mail.backends.filebased.EmailBackend": ("filemail://", "written to files on the server"),
    "django.core.mail.backends.locmem.EmailBackend": ("memorymail://", "kept in memory"),
    "django.core.mail.backends.dummy.EmailBackend": ("dummymail://", "thrown away"),
}
_MAIL_SERVER_HINT = "Set EMAIL_URL to your mail server, e.g. smtp+tls://user:password@smtp.example.com:587."


def _undelivered(check_id: str, consequence: str, level: type[Error] | type[Warning]) -> list:
    scheme, fate = _UNDELIVERED_BACKENDS[settings.EMAIL_BACKEND]
    return [
        level(
            f"EMAIL_URL={scheme} ({settings.EMAIL_BACKEND}): verification codes would be {fate}, not delivered "
            f"to approvers, which defeats the two-person rule. {consequence}",
            hint=_MAIL_SERVER_HINT,
            id=check_id,
        )
    ]


@register(Tags.security)
def check_code_delivery(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E008: with DEBUG off, verification codes must leave this machine by real e-mail.

    A code printed on the console (the default when EMAIL_URL is unset) or
    written to a local file reaches whoever runs the command, so one person
    could request and approve the same downgrade. Printing codes is the
    development demo: it needs DEBUG=1. An Error, so every management command
    that runs system checks (request_rollback, execute_rollback, migrate,
    runserver, ...) refuses to run; `require_code_delivery` does the same
    for the WSGI/ASGI entry points, where Django runs no checks.
    """
    if settings.DEBUG or settings.EMAIL_BACKEND not in _UNDELIVERED_BACKENDS:
        return []
    return _undelivered("opsapp.E008", "With DEBUG off the console does not start.", Error)


@register(Tags.security, deploy=True)
def check_code_delivery_for_deploy(app_configs=None, **kwargs) -> list[Warning]:
    """opsapp.W001 (deploy only): the same finding in a DEBUG=1 checkout, where it is allowed (the demo)."""
    if not settings.DEBUG or settings.EMAIL_BACKEND not in _UNDELIVERED_BACKENDS:
        return []
    return _undelivered("opsapp.W001", "Allowed only because DEBUG=1 (the demo mode).", Warning)


@register(Tags.compatibility)
def check_mail_file_path(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E009: filemail:// must name an absolute directory.

    `filemail://var/mail` reads as host `var`, path `/mail`: whatever it
    meant, it would land relative to the working directory of each process.
    """
    if settings.EMAIL_BACKEND != "django.core.mail.backends.filebased.EmailBackend":
        return []
    if Path(settings.EMAIL_FILE_PATH).is_absolute():
        return []
    return [
        Error(
            f"EMAIL_URL=filemail://{settings.EMAIL_FILE_PATH} names a relative directory: mail would be written "
            "relative to the working directory of each process.",
            hint="Give an absolute directory after three slashes: filemail:///srv/ops-console/mail.",
            id="opsapp.E009",
        )
    ]


def require_code_delivery() -> None:
    """Raise ImproperlyConfigured when opsapp.E008 or E009 fire.

    For the WSGI and ASGI entry points: gunicorn runs no system checks, so
    without this a DEBUG-off server with printed codes would serve requests.
    """
    errors = check_code_delivery() + check_mail_file_path()
    if errors:
        raise ImproperlyConfigured("\n".join(f"{e.id}: {e.msg} HINT: {e.hint}" for e in errors))


@register(Tags.security, deploy=True)
def check_two_factor(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E020 (deploy only): production requires a second factor unless waived explicitly.

    Without it a stolen password is enough to request a downgrade or to take an
    approver's place.
    """
    if settings.DEBUG or settings.OPS_REQUIRE_2FA or settings.OPS_ALLOW_NO_2FA:
        return []
    return [
        Error(
            "OPS_REQUIRE_2FA is off with DEBUG off: a password alone signs in to a console that can drop tables.",
            hint="Set OPS_REQUIRE_2FA=1 (the default when DEBUG=0), or OPS_ALLOW_NO_2FA=1 to run without it on purpose.",
            id="opsapp.E020",
        )
    ]


@register(Tags.compatibility)
def check_rehearsal_settings(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E070: OPS_REHEARSAL_URL must be a PostgreSQL URL; E071: restore jobs must be 1 or more;
    E120: the restore sessions' maintenance_work_mem must be one PostgreSQL accepts."""
    from opsapp.targets import mask_url

    errors: list[Error] = []
    url = (settings.OPS_REHEARSAL_URL or "").strip()
    if url:
        from opsapp.services.db_url import parse_url

        try:
            backend = parse_url(url.replace("postgres://", "postgresql://", 1)).get_backend_name()
        except Exception:  # noqa: BLE001 - any parse failure is a configuration problem
            backend = ""
        if backend != "postgresql":
            errors.append(
                Error(
                    f"OPS_REHEARSAL_URL {mask_url(url)!r} is not a PostgreSQL URL.",
                    hint="Point it at a PostgreSQL server where the console may create and drop databases, "
                    "e.g. postgresql://ops@rehearsal-host/postgres.",
                    id="opsapp.E070",
                )
            )
    if settings.OPS_REHEARSAL_RESTORE_JOBS < 1:
        errors.append(
            Error(
                f"OPS_REHEARSAL_RESTORE_JOBS is {settings.OPS_REHEARSAL_RESTORE_JOBS}; pg_restore needs 1 or more jobs.",
                id="opsapp.E071",
            )
        )
    memory = settings.OPS_REHEARSAL_RESTORE_MEMORY_MB
    if not 1 <= memory <= MAX_MAINTENANCE_WORK_MEM_MB:
        errors.append(
            Error(
                f"OPS_REHEARSAL_RESTORE_MEMORY_MB is {memory}; PostgreSQL's maintenance_work_mem takes "
                f"1 to {MAX_MAINTENANCE_WORK_MEM_MB} MB.",
                hint="Each of the OPS_REHEARSAL_RESTORE_JOBS restore sessions may use this much while it builds "
                "an index of the scratch copy; 256 is the default.",
                id="opsapp.E120",
            )
        )
    return errors


MAX_MAINTENANCE_WORK_MEM_MB = 2147483647 // 1024  # PostgreSQL's limit, in kB


@register(Tags.security)
def check_audit_keys(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E041 / E043: a configured audit key that cannot be used (never echoing the key)."""
    from opsapp.services.audit import keys
    from opsapp.services.errors import AuditError

    errors: list[Error] = []
    try:
        text = keys.configured_mac_secret()
        if text and len(text) < keys.MIN_KEY_LENGTH:
            errors.append(
                Error(
                    f"The audit MAC key is shorter than {keys.MIN_KEY_LENGTH} characters.",
                    hint="Generate one with `manage.py audit_keys --generate --dir DIR`.",
                    id="opsapp.E041",
                )
            )
    except AuditError as exc:
        errors.append(Error(str(exc), hint="OPS_AUDIT_KEY_FILE must be readable by the console.", id="opsapp.E041"))
    try:
        keys.public_key()
    except AuditError as exc:
        errors.append(Error(str(exc), hint="Generate keys with `manage.py audit_keys --generate`.", id="opsapp.E043"))
    return errors


@register(Tags.security, deploy=True)
def check_audit_keys_deploy(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E040 / E042 (deploy only): production keeps its audit keys outside the database.

    Without the MAC key anyone who can write the database can append or rehash
    events; without the checkpoint key nobody notices a cut tail or a truncate.
    """
    if settings.DEBUG:
        return []
    errors: list[Error] = []
    if not (settings.OPS_AUDIT_KEY or settings.OPS_AUDIT_KEY_FILE):
        errors.append(
            Error(
                "No audit MAC key with DEBUG off: audit events cannot be written, and the chain would not be "
                "protected against someone who can write the console's database.",
                hint="Set OPS_AUDIT_KEY_FILE (from `manage.py audit_keys --generate --dir DIR`).",
                id="opsapp.E040",
            )
        )
    if not (settings.OPS_AUDIT_SIGNING_KEY_FILE or settings.OPS_AUDIT_PUBLIC_KEY_FILE):
        errors.append(
            Error(
                "No checkpoint key with DEBUG off: verify_audit_log cannot sign or check checkpoints, so a cut "
                "tail or a truncated audit table would go unnoticed.",
                hint="Set OPS_AUDIT_SIGNING_KEY_FILE on the host that runs verify_audit_log from cron.",
                id="opsapp.E042",
            )
        )
    return errors


@register(Tags.compatibility)
def check_restore_destinations(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E110-E115: every restore destination has a usable URL that is no target's and not the console's."""
    from opsapp.destinations import destination_names, validate_destination

    return [
        Error(
            message,
            hint="Each name in OPS_RESTORE_DESTINATIONS needs OPS_RESTORE_DESTINATION_<NAME>_URL (or _URL_FILE) "
            "naming a new, empty database (docs/restore.md).",
            id=check_id,
            obj=f"restore destination {name}",
        )
        for name in destination_names()
        for check_id, message in validate_destination(name)
    ]


_DB_BACKEND = "django_tasks_db.DatabaseBackend"


@register(Tags.compatibility)
def check_task_queue(app_configs=None, **kwargs) -> list[Error]:
    """opsapp.E030/E031: long operations need the durable database queue and sane job settings."""
    errors: list[Error] = []
    backend = (getattr(settings, "TASKS", {}) or {}).get("default", {}).get("BACKEND", "")
    if backend != _DB_BACKEND:
        errors.append(
            Error(
                f"TASKS['default'] uses {backend or 'no backend'!r}: operations would not survive a restart, nor "
                "run on workers (an immediate backend would run a dump inside the web request).",
                hint=f"Use {_DB_BACKEND!r} on the console's own database (console/settings.py).",
                id="opsapp.E030",
            )
        )
    for name, low in (("OPS_HEARTBEAT_SECONDS", 0.05), ("OPS_JOB_LOCK_WAIT_SECONDS", 0), ("OPS_SNAPSHOT_RETRIES", 0)):
        value = getattr(settings, name)
        if value < low or (name == "OPS_HEARTBEAT_SECONDS" and value > 60):
            bound = "between 0.05 and 60" if name == "OPS_HEARTBEAT_SECONDS" else "zero or more"
            errors.append(Error(f"{name}={value!r} must be {bound}.", id="opsapp.E031", obj=name))
    return errors


@register(Tags.database)
def check_audit_search_index(app_configs=None, databases=None, **kwargs) -> list[Warning]:
    """opsapp.W044 (with --database, and at `migrate`): the audit search has no trigram index on PostgreSQL.

    Search still works without it, by scanning the whole audit table; at a
    million events that takes seconds per page. Migration 0017 builds the
    index when the console's role may create pg_trgm.
    """
    from django.db import DatabaseError, connections

    from opsapp.services.audit.search import INDEX_NAME, search_index_missing

    if not databases or "default" not in databases:
        return []
    try:
        missing = search_index_missing(connections["default"])
    except DatabaseError:
        return []  # no database to look at: other checks and the first query say so
    if not missing:
        return []
    return [
        Warning(
            f"The audit log has no search index ({INDEX_NAME}): searching it scans the whole table.",
            hint="As a superuser run CREATE EXTENSION pg_trgm; in the console database, then "
            "re-run migration 0016_audit_search_trigram (`manage.py migrate opsapp` to the migration before it, "
            "then `manage.py migrate`).",
            id="opsapp.W044",
        )
    ]
