"""Settings for the migration operations console.

Every value comes from the environment (12-factor) through django-environ;
`.env` at the project root is read when present. `.env.example` documents
each variable. Targets are parsed and validated in `opsapp.targets` and by the
system checks in `opsapp.checks`, so a malformed target never crashes start-up
with a traceback: `manage.py check` names the problem instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file() and not os.environ.get("OPS_IGNORE_DOTENV"):
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)

_DEV_SECRET_KEY = "dev-only-insecure-key-never-use-in-production"
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY and os.environ.get("SECRET_KEY_FILE"):
    SECRET_KEY = Path(os.environ["SECRET_KEY_FILE"]).read_text().strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set SECRET_KEY (or SECRET_KEY_FILE) in the environment; "
            "a development default is only used when DEBUG=1."
        )
    SECRET_KEY = _DEV_SECRET_KEY
# Earlier SECRET_KEYs during a rotation: they still open sessions, signed values and the 2FA secrets
# sealed under them (opsapp.services.sealing); `manage.py otp_rekey` moves those to SECRET_KEY.
# Comma-separated, or SECRET_KEY_FALLBACKS_FILE with one key per line.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
if not SECRET_KEY_FALLBACKS and os.environ.get("SECRET_KEY_FALLBACKS_FILE"):
    _lines = Path(os.environ["SECRET_KEY_FALLBACKS_FILE"]).read_text().splitlines()
    SECRET_KEY_FALLBACKS = [line.strip() for line in _lines if line.strip()]

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # Two-factor sign-in (opsapp.services.two_factor). Before opsapp so that
    # opsapp.admin.two_factor can unregister their device admins (which show secrets).
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    # opsapp before django.contrib.admin: its admin/base_site.html (environment banner) and
    # admin/index.html (dashboard) must win over django.contrib.admin's own.
    "opsapp",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    # The task queue (Django's Tasks API; django.tasks from Django 6 on): the database backend,
    # on the console's own database. Workers: `manage.py db_worker` (docs/production.md).
    "django_tasks",
    "django_tasks_db",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # A NUL byte in a query string is a 400 before any view turns it into a DataError (500).
    "opsapp.middleware.NulQueryMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # request.user.is_verified(), then: no admin page without a second factor (OPS_REQUIRE_2FA).
    "django_otp.middleware.OTPMiddleware",
    "opsapp.middleware.TwoFactorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # AxesMiddleware must be last: it turns a lockout into a 429 page.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # Axes first: it refuses a locked-out client before a password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "console.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "opsapp.context_processors.environment",
            ],
        },
    },
]

WSGI_APPLICATION = "console.wsgi.application"

VAR_DIR = Path(env.str("OPS_VAR_DIR", default=str(BASE_DIR / "var")))

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'console.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite has no row locks (SELECT ... FOR UPDATE does nothing): every transaction takes the write
    # lock when it begins, so two that read-then-write the same rows (one backup code used twice, one
    # request executed twice) run one after the other instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("transaction_mode", "IMMEDIATE")
    DATABASES["default"]["OPTIONS"].setdefault("timeout", 20)
# Seconds a process keeps its database connection (Django's CONN_MAX_AGE; 0: a new one per request,
# and per job in a worker). Workers should keep theirs (docs/production.md): a job then costs the
# server no new backend process. A connection kept is checked before reuse (CONN_HEALTH_CHECKS).
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True
# One date form with the time zone on every page (console/formats/en/formats.py).
FORMAT_MODULE_PATH = ["console.formats"]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- e-mail: verification codes go out through Django's email framework ---
# The default prints codes in the terminal: the development demo, allowed only
# with DEBUG=1 (opsapp.E008 stops the console otherwise, as it does for any
# backend that keeps codes on this machine).
_EMAIL_URL = env.str("EMAIL_URL", default="consolemail://")
_EMAIL = env.email_url_config(_EMAIL_URL)
if _EMAIL["EMAIL_BACKEND"] == "django.core.mail.backends.filebased.EmailBackend":
    # django-environ drops the host and the first "/" of the path, so filemail:///srv/mail would
    # silently write into ./srv/mail. Keep host + path: three slashes mean an absolute directory,
    # and a relative one is refused by opsapp.E009.
    _url = urlsplit(_EMAIL_URL)
    _path = unquote(_url.netloc + _url.path)
    _EMAIL["EMAIL_FILE_PATH"] = "/" + _path.lstrip("/") if _path.startswith("/") else _path
vars().update(_EMAIL)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="ops-console@localhost")

# --- security (production values; see `manage.py check --deploy`) ---
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_AGE = min(env.int("SESSION_COOKIE_AGE", default=8 * 3600), 12 * 3600)
if env.bool("USE_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- login throttling (django-axes) ---
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.5)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Behind a reverse proxy, name the header carrying the real client address
# (e.g. HTTP_X_REAL_IP, set by the proxy) so throttling and audit see the client, not the proxy.
AXES_IPWARE_META_PRECEDENCE_ORDER = env.list("OPS_CLIENT_IP_HEADERS", default=["REMOTE_ADDR"])
OPS_CLIENT_IP_HEADERS = AXES_IPWARE_META_PRECEDENCE_ORDER
# django-ipware is not installed, so axes would fall back to REMOTE_ADDR (the
# proxy's address: one lockout for everybody). Use the same proxy-aware lookup
# as the audit log instead. Only name a header your proxy overwrites (e.g.
# nginx `proxy_set_header X-Real-IP $remote_addr;` -> HTTP_X_REAL_IP), never
# one a client can forge.
AXES_CLIENT_IP_CALLABLE = "opsapp.services.actors.client_ip"
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)

# --- two-factor sign-in (README "Roles", docs/production.md "Two-factor sign-in") ---
# Every staff user (operators, approvers, auditors, superusers) must confirm a
# TOTP token or a backup code after the password. Off only in the quick start.
OPS_REQUIRE_2FA = env.bool("OPS_REQUIRE_2FA", default=not DEBUG)
# `check --deploy` refuses OPS_REQUIRE_2FA=0 with DEBUG=0 unless this says so explicitly.
OPS_ALLOW_NO_2FA = env.bool("OPS_ALLOW_NO_2FA", default=False)
OTP_TOTP_ISSUER = env.str("OPS_2FA_ISSUER", default="Ops console")
OPS_BACKUP_CODE_COUNT = 10

# --- the console's own domain ---
OPS_ENVIRONMENT_NAME = env.str("OPS_ENVIRONMENT_NAME", default="development" if DEBUG else "")
OPS_ENVIRONMENT_COLOUR = env.str("OPS_ENVIRONMENT_COLOUR", default="")
OPS_SNAPSHOT_DIR = Path(env.str("OPS_SNAPSHOT_DIR", default=str(VAR_DIR / "snapshots")))
# The audit log (docs/audit.md). Every event is MACed with OPS_AUDIT_KEY (or the file OPS_AUDIT_KEY_FILE
# names), a secret kept out of the console's database; retired keys, one per line, in
# OPS_AUDIT_PREVIOUS_KEYS_FILE. verify_audit_log signs checkpoints with the Ed25519 private key in
# OPS_AUDIT_SIGNING_KEY_FILE and writes them to OPS_AUDIT_CHECKPOINT_DIR; a host that only verifies needs
# OPS_AUDIT_PUBLIC_KEY_FILE. `manage.py audit_keys --generate` creates the keys. With DEBUG=1 and no keys,
# development keys are derived from SECRET_KEY (opsapp.services.audit.keys).
OPS_AUDIT_KEY = env.str("OPS_AUDIT_KEY", default="")
OPS_AUDIT_KEY_FILE = env.str("OPS_AUDIT_KEY_FILE", default="")
OPS_AUDIT_PREVIOUS_KEYS_FILE = env.str("OPS_AUDIT_PREVIOUS_KEYS_FILE", default="")
OPS_AUDIT_SIGNING_KEY_FILE = env.str("OPS_AUDIT_SIGNING_KEY_FILE", default="")
OPS_AUDIT_PUBLIC_KEY_FILE = env.str("OPS_AUDIT_PUBLIC_KEY_FILE", default="")
OPS_AUDIT_CHECKPOINT_DIR = Path(env.str("OPS_AUDIT_CHECKPOINT_DIR", default=str(VAR_DIR / "audit-checkpoints")))
# Also e-mail each new signed checkpoint to the active members of the auditors group (a copy outside
# the operators' reach); verify_audit_log exits 1 when it cannot.
OPS_AUDIT_CHECKPOINT_MAIL = env.bool("OPS_AUDIT_CHECKPOINT_MAIL", default=False)

# Targets: raw strings here, parsed and validated by opsapp.targets / opsapp.checks.
# OPS_TARGETS_FILE (TOML, opsapp.targets_file) declares more; the demo target "shop" is the
# default only when neither OPS_TARGETS nor OPS_TARGETS_FILE is set.
OPS_TARGETS_FILE = env.str("OPS_TARGETS_FILE", default="")
OPS_TARGETS = {}
for _name in [
    n.strip() for n in env.str("OPS_TARGETS", default="" if OPS_TARGETS_FILE else "shop").split(",") if n.strip()
]:
    _key = _name.upper()
    _defaults = (
        {"URL": f"sqlite:///{VAR_DIR / 'shop.sqlite3'}", "ALEMBIC_INI": str(BASE_DIR / "alembic.ini")}
        if _name == "shop"
        else {"URL": "", "ALEMBIC_INI": ""}
    )
    OPS_TARGETS[_name] = {
        "URL": env.str(f"OPS_TARGET_{_key}_URL", default=_defaults["URL"]),
        "ALEMBIC_INI": env.str(f"OPS_TARGET_{_key}_ALEMBIC_INI", default=_defaults["ALEMBIC_INI"]),
        "ISOLATION_LEVEL": env.str(f"OPS_TARGET_{_key}_ISOLATION_LEVEL", default="SERIALIZABLE"),
    }

# The names declared by environment variables: a file target of the same name is an
# error (opsapp.E085), and the environment's definition is the one kept meanwhile.
OPS_ENV_TARGET_NAMES = tuple(OPS_TARGETS)
if OPS_TARGETS_FILE:
    from opsapp.targets_file import load_targets_file

    for _name, _raw in load_targets_file(OPS_TARGETS_FILE, os.environ).targets.items():
        OPS_TARGETS.setdefault(_name, _raw)

# Restore destinations (opsapp.destinations, docs/restore.md): named, new and empty databases a queued
# restore writes into. The queue holds only the name; the URL (with its password) stays in the
# environment: OPS_RESTORE_DESTINATION_<NAME>_URL, or _URL_FILE naming a file that holds it.
OPS_RESTORE_DESTINATIONS = {
    _name: {
        "URL": env.str(f"OPS_RESTORE_DESTINATION_{_name.upper()}_URL", default=""),
        "URL_FILE": env.str(f"OPS_RESTORE_DESTINATION_{_name.upper()}_URL_FILE", default=""),
    }
    for _name in (n.strip() for n in env.str("OPS_RESTORE_DESTINATIONS", default="").split(","))
    if _name
}

# Django's error pages and reports mask target passwords (OPS_TARGETS and URLs in tracebacks).
DEFAULT_EXCEPTION_REPORTER_FILTER = "opsapp.targets.MaskingExceptionReporterFilter"

# Gate limits (docs/design.md, "The downgrade gate").
OPS_CODE_TTL_SECONDS = env.int("OPS_CODE_TTL_SECONDS", default=600)
OPS_CODE_MAX_ATTEMPTS = env.int("OPS_CODE_MAX_ATTEMPTS", default=5)
OPS_CODE_DIGITS = max(8, env.int("OPS_CODE_DIGITS", default=8))
OPS_SNAPSHOT_MAX_AGE_SECONDS = env.int("OPS_SNAPSHOT_MAX_AGE_SECONDS", default=3600)
# A pending request older than this is expired at gate 1 (its plan is stale by then).
OPS_REQUEST_TTL_SECONDS = env.int("OPS_REQUEST_TTL_SECONDS", default=86400)
OPS_TWO_PERSON_RULE = env.bool("OPS_TWO_PERSON_RULE", default=True)
OPS_LOCK_WAIT_SECONDS = env.float("OPS_LOCK_WAIT_SECONDS", default=5.0)
OPS_LOCK_TIMEOUT_MS = env.int("OPS_LOCK_TIMEOUT_MS", default=5000)
OPS_SERIALIZATION_RETRIES = env.int("OPS_SERIALIZATION_RETRIES", default=3)
OPS_CONNECT_TIMEOUT_SECONDS = env.int("OPS_CONNECT_TIMEOUT_SECONDS", default=5)
# Statement and lock timeout of a sync's read of alembic_version (a table locked by a running
# migration must not stall sync_revisions --all): the target is recorded unreachable instead.
OPS_READ_TIMEOUT_SECONDS = env.float("OPS_READ_TIMEOUT_SECONDS", default=5.0)
# Default --jobs of sync_revisions / check_drift: targets read at once (I/O-bound threads).
OPS_SYNC_JOBS = env.int("OPS_SYNC_JOBS", default=1)
# Cron jobs (opsapp.services.cron): seconds that may pass between two runs of each job, on
# top of the defaults from docs/production.md's crontab; "job=0" stops watching a job.
# A value that is not whole seconds is kept as text and refused by opsapp.E087.
OPS_CRON_INTERVALS = {
    _job: int(_value) if _value.strip().isdigit() else _value
    for _job, _value in env.dict("OPS_CRON_INTERVALS", default={}).items()
}
OPS_CRON_GRACE_SECONDS = env.int("OPS_CRON_GRACE_SECONDS", default=120)
# /metrics (Prometheus): a bearer token (or OPS_METRICS_TOKEN_FILE) and/or an allow-list of
# client addresses / networks; each one set must pass. Neither set: /metrics answers 404.
OPS_METRICS_TOKEN = env.str("OPS_METRICS_TOKEN", default="")
if not OPS_METRICS_TOKEN and os.environ.get("OPS_METRICS_TOKEN_FILE"):
    OPS_METRICS_TOKEN = Path(os.environ["OPS_METRICS_TOKEN_FILE"]).read_text().strip()
OPS_METRICS_ALLOWED_IPS = env.list("OPS_METRICS_ALLOWED_IPS", default=[])
OPS_PG_DUMP = env.str("OPS_PG_DUMP", default="pg_dump")
OPS_PG_RESTORE = env.str("OPS_PG_RESTORE", default="pg_restore")
# Rehearsals (issue 14): a PostgreSQL server where the console may create and drop
# scratch databases (any database on it to connect to, e.g. .../postgres); without
# it the target's own server is used when the console's role may CREATEDB there.
OPS_REHEARSAL_URL = env.str("OPS_REHEARSAL_URL", default="")
# Gate "rehearsal": unset means on for PostgreSQL targets when DEBUG is off.
OPS_REQUIRE_REHEARSAL = env.bool("OPS_REQUIRE_REHEARSAL", default=None)
OPS_REHEARSAL_RESTORE_JOBS = env.int("OPS_REHEARSAL_RESTORE_JOBS", default=min(4, os.cpu_count() or 1))
# maintenance_work_mem (MB) of each restore job's session: index builds of the copy sort in memory.
OPS_REHEARSAL_RESTORE_MEMORY_MB = env.int("OPS_REHEARSAL_RESTORE_MEMORY_MB", default=256)

# Long operations run as durable jobs (opsapp.services.operations). Only an
# Operation id ever enters the queue table: never a code, never a password.
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default"],
    }
}
# How often a running job writes its heartbeat and progress, and looks for a cancel.
OPS_HEARTBEAT_SECONDS = env.float("OPS_HEARTBEAT_SECONDS", default=1.0)
# How long a job waits for another operation on the same target to finish before it gives up.
OPS_JOB_LOCK_WAIT_SECONDS = env.float("OPS_JOB_LOCK_WAIT_SECONDS", default=3600.0)
# A snapshot whose worker died is taken again (a fresh file) at most this many times.
OPS_SNAPSHOT_RETRIES = env.int("OPS_SNAPSHOT_RETRIES", default=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
        "not_a_404": {"()": "django.utils.log.CallbackFilter", "callback": "ext://opsapp.log_filters.not_a_404"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        "mail_admins": {
            "level": "ERROR",
            "filters": ["require_debug_false"],
            "class": "django.utils.log.AdminEmailHandler",
        },
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's default config gives `django` its own console handler as well as the root's: every 404
        # was printed twice. One line per event, through the root; 500s still mail ADMINS.
        "django": {"handlers": ["mail_admins"], "level": "INFO", "propagate": True},
        "django.server": {"filters": ["not_a_404"], "propagate": True},
        "django.db.backends": {"level": "WARNING"},
        # Start-up chatter that would fill every cron mail.
        "alembic.runtime.plugins": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}
