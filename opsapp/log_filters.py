"""Logging filters named in settings.LOGGING."""

from __future__ import annotations

import logging


def not_a_404(record: logging.LogRecord) -> bool:
    """Drop runserver's access line for a 404: `django.request` already logged that "Not Found" once."""
    return getattr(record, "status_code", None) != 404
