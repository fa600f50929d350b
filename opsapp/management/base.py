"""The base of the app's management commands.

`OpsCommand` is Django's `BaseCommand` plus one rule for Alembic's log: its
INFO lines ("Context impl PostgresqlImpl.", "Running upgrade ...") are shown
only with `-v 2` or more, on stderr like every log line, so cron mail stays
quiet and `--json` output on stdout is never mixed with log text.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand


class OpsCommand(BaseCommand):
    def execute(self, *args: Any, **options: Any) -> str | None:
        alembic_log = logging.getLogger("alembic")
        level = alembic_log.level
        # The level of the "alembic" logger only, for this command's run: the
        # server's log (LOGGING in settings) keeps Alembic's INFO lines.
        alembic_log.setLevel(logging.INFO if options.get("verbosity", 1) >= 2 else logging.WARNING)
        try:
            return super().execute(*args, **options)
        finally:
            alembic_log.setLevel(level)
