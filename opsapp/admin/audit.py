"""Admin for audit (see the issue that owns it)."""

from __future__ import annotations
