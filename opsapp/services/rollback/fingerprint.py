"""A deterministic fingerprint of a downgrade plan, for gate "plan".

Alembic's offline SQL is not byte-stable across processes: when a downgrade
un-merges a merge point, which of the merge's parents is INSERTed into the
version table and which is UPDATEd follows Python's per-process hash seed. So
the SHA-256 of the preview text cannot be compared between the process that
made the request and the one that executes it.

What the approver reviewed, and what must not change, is: the revisions each
step reverts, the migration statements of each step in the stored order, and
the heads after each step. The version-table bookkeeping statements are left
out of the comparison; the heads after each step say the same thing without
depending on the order Alembic happens to write them in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepMark:
    """Where a step's output ends in the preview buffer, as Alembic reported it."""

    revisions: tuple[str, ...]
    end: int
    heads_after: tuple[str, ...]


def _bookkeeping(version_table: str, version_schema: str | None) -> re.Pattern[str]:
    table = re.escape(version_table)
    schema = rf'(?:"?{re.escape(version_schema)}"?\s*\.\s*)' if version_schema else r'(?:"?[\w$]+"?\s*\.\s*)?'
    return re.compile(rf'^(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+{schema}"?{table}"?(?:\s|\(|$)', re.I)


def step_digests(
    sql: str,
    marks: list[StepMark],
    *,
    split: Callable[[str], list[str]],
    version_table: str,
    version_schema: str | None = None,
) -> list[dict[str, Any]]:
    """One entry per step: its revisions, the SHA-256 of its migration statements, the heads after it.

    Text before the first step (e.g. BEGIN) is folded into the first entry and
    text after the last step (e.g. COMMIT) gets an entry of its own, so every
    statement of the preview except the bookkeeping is covered. `split`
    turns a chunk of offline SQL into its statements.
    """
    bookkeeping = _bookkeeping(version_table, version_schema)
    entries: list[dict[str, Any]] = []
    for mark, (begin, end) in _spans(marks, sql):
        statements = [text for text in split(sql[begin:end]) if not bookkeeping.match(text)]
        entries.append(
            {
                "revisions": list(mark.revisions),
                "statements_sha256": _sha(json.dumps(statements, separators=(",", ":"))),
                "statements": len(statements),
                "heads_after": sorted(mark.heads_after),
            }
        )
    return entries


def _spans(marks: list[StepMark], sql: str) -> list[tuple[StepMark, tuple[int, int]]]:
    spans: list[tuple[StepMark, tuple[int, int]]] = []
    start = 0
    for mark in marks:
        spans.append((mark, (start, mark.end)))
        start = mark.end
    last_heads = marks[-1].heads_after if marks else ()
    spans.append((StepMark(revisions=(), end=len(sql), heads_after=last_heads), (start, len(sql))))
    return spans


def fingerprint(digests: list[dict[str, Any]]) -> str:
    """The plan fingerprint: SHA-256 over the step digests, in order."""
    return _sha(json.dumps(digests, sort_keys=True, separators=(",", ":")))


def first_difference(stored: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> str:
    """Name the first step where two plans differ, in words an operator can act on."""
    for number, (old, new) in enumerate(zip(stored, fresh, strict=False), start=1):
        if old == new:
            continue
        name = ", ".join(old.get("revisions") or []) or "(after the last step)"
        if old.get("revisions") != new.get("revisions"):
            return f"step {number} now reverts {new.get('revisions')} instead of {old.get('revisions')}"
        if old.get("heads_after") != new.get("heads_after"):
            return (
                f"step {number} ({name}) now leaves heads {new.get('heads_after')} instead of {old.get('heads_after')}"
            )
        return f"the SQL of step {number} ({name}) changed"
    return f"the plan now has {len(fresh)} part(s) instead of {len(stored)}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
