"""Admin for snapshot (see the issue that owns it)."""

from __future__ import annotations
