"""Branch-aware downgrade planning, the way Alembic resolves and orders it.

`plan_downgrade` resolves a downgrade target exactly as `alembic downgrade`
does (full id, unique prefix, `branch@rev`, `base`, relative `-N`) using
Alembic's own RevisionMap, and lists the revisions that would be reverted in
the order Alembic runs them. It refuses, with a message naming the
revision, what Alembic would refuse or what would silently do nothing.
By default it works from the synced Revision rows: no migration file is imported.
"""

from __future__ import annotations

import re
import threading
import unicodedata
import warnings
from collections import OrderedDict

from alembic.script.revision import (
    MultipleHeads,
    RangeNotAncestorError,
    ResolutionError,
    Revision,
    RevisionError,
    RevisionMap,
)

from opsapp.models import Revision as RevisionRow
from opsapp.models import Target
from opsapp.services.catalog import drift
from opsapp.services.catalog.preview import DowngradePlan
from opsapp.services.catalog.store import catalog_key
from opsapp.services.errors import RevisionResolutionError

# One optional `branch@` before a revision, symbol or relative step; nothing blank around the `@`.
_WELL_FORMED = re.compile(r"^(?:[^@]+@)?[^@]+$")
MAX_EXPRESSION_LENGTH = 255  # RollbackRequest.to_revision_input
_RELATIVE = re.compile(r"^(?:(?P<branch>.+?)@)?(?P<symbol>\w+)?(?P<steps>[+-]\d+)$")


_MAP_CACHE: OrderedDict[tuple, RevisionMap] = OrderedDict()
_MAP_CACHE_SIZE = 8
_MAP_CACHE_LOCK = threading.Lock()


def revision_map_from_rows(target: Target) -> RevisionMap:
    """An Alembic RevisionMap built from the synced rows of `target` (no file import).

    Rows are fed in file order (by path), the order ScriptDirectory loads
    them, so traversal ties break the same way as with the real files.
    Maps are cached per catalog and facts fingerprint (a sync that changes
    the rows changes the fingerprint); targets sharing a script directory
    share the map. Rebuilding a 10,000-revision map costs ~150 ms per page view.
    """
    key = catalog_key(target)
    if target.catalog_id is not None:
        with _MAP_CACHE_LOCK:
            cached = _MAP_CACHE.get(key)
            if cached is not None:
                _MAP_CACHE.move_to_end(key)
                return cached
    rmap = _build_revision_map(target)
    if target.catalog_id is not None:
        # Build the lazy, memoized structures now, so threads only ever read a shared map.
        rmap.heads, rmap.bases, rmap._revision_map  # noqa: B018
        with _MAP_CACHE_LOCK:
            _MAP_CACHE[key] = rmap
            while len(_MAP_CACHE) > _MAP_CACHE_SIZE:
                _MAP_CACHE.popitem(last=False)
    return rmap


def _build_revision_map(target: Target) -> RevisionMap:
    rows = list(
        RevisionRow.objects.filter(catalog_id=target.catalog_id)
        .order_by("path", "revision")
        .values_list("revision", "down_revisions", "depends_on", "branch_labels")
    )
    revisions = [
        Revision(rev, tuple(down) or None, tuple(depends) or None, tuple(labels) or None)
        for rev, down, depends, labels in rows
    ]
    return RevisionMap(lambda: revisions)


def _refuse(message: str, target_name: str, **attrs: object) -> RevisionResolutionError:
    return RevisionResolutionError(message, target=target_name, **attrs)


def _prefix_candidates(rmap: RevisionMap, prefix: str) -> list[str]:
    return sorted(rev for rev in rmap._revision_map if isinstance(rev, str) and rev.startswith(prefix))


def _ancestors(rmap: RevisionMap, heads: list[str]) -> set[str]:
    revs = [rmap.get_revision(rev) for rev in heads]
    return {rev.revision for rev in rmap._get_ancestor_nodes(revs, include_dependencies=True)}


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")


def check_expression(name: str, to: str) -> None:
    """Refuse (RevisionResolutionError) a revision expression Alembic cannot even parse.

    Alembic answers `@`, `@@`, `payments@` and the like with an
    AssertionError, and reads `@abc` as "every branch": refuse them here,
    naming what is wrong, before anything resolves them.
    """
    hint = "Write a revision id, a unique prefix, branch@rev, base or -N."
    if len(to) > MAX_EXPRESSION_LENGTH:
        raise _refuse(
            f"Malformed revision {_shown(to)}: longer than {MAX_EXPRESSION_LENGTH} characters. {hint}",
            name,
            revision=to,
        )
    # Spaces, control and format characters (NUL, tabs, a right-to-left override) are in no revision id.
    if any(unicodedata.category(char)[0] in "CZ" for char in to):
        raise _refuse(
            f"Malformed revision {_shown(to)}: it contains a space or a control character. {hint}", name, revision=to
        )
    if not _WELL_FORMED.match(to):
        if to.count("@") > 1:
            why = "more than one '@'"
        elif to.startswith("@"):
            why = "no branch name before '@'"
        else:
            why = "nothing after '@' (e.g. <branch>@head, <branch>@-1)"
        raise _refuse(f"Malformed revision {_shown(to)}: {why}. {hint}", name, revision=to)


def overlapping_rows(rmap: RevisionMap, heads: list[str]) -> dict[str, list[str]]:
    """Each of `heads` that is an ancestor (dependencies included) of another one -> those it is below."""
    covered: dict[str, list[str]] = {}
    for newer in sorted(set(heads)):
        below = _ancestors(rmap, [newer]) - {newer}
        for rev in below & set(heads):
            covered.setdefault(rev, []).append(newer)
    return covered


def _resolve(rmap: RevisionMap, name: str, to: str, heads: list[str]) -> tuple[str, list[str]]:
    """(resolved id or "base", Alembic's downgrade steps). Raises RevisionResolutionError."""
    relative = _RELATIVE.match(to)
    # `+N` alone counts from the current heads, so it can only move up; `a1+1` is a revision (a1 and one
    # step up) that Alembic accepts as a downgrade target, checked below like any other target.
    if relative and relative["steps"].startswith("+") and relative["symbol"] is None:
        raise _refuse(
            f"{to!r} moves up the history: a downgrade target must be below the current heads.", name, revision=to
        )
    if relative and relative["symbol"] is None and relative["branch"] is None and len(set(heads)) > 1:
        raise _refuse(
            f"The relative step {to!r} is ambiguous: the database has several heads ({', '.join(heads)}). "
            f"Name the branch (e.g. <branch>@{to}) or the revision to downgrade to.",
            name,
            revision=to,
            heads=heads,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            branch = to.split("@", 1)[0] if "@" in to else ""
            if branch:
                # Alembic reads an unknown branch in `typo@base` as "every branch": a full downgrade.
                rmap.get_revisions(branch)
            _, resolved = rmap._parse_downgrade_target(
                current_revisions=tuple(heads), target=to, assert_relative_length=True
            )
            steps = [rev.revision for rev in rmap.iterate_revisions(tuple(heads), to, select_for_downgrade=True)]
    except MultipleHeads as exc:
        raise _refuse(
            f"{to!r} names several heads ({', '.join(exc.heads)}): name one revision, or use <branch>@head.",
            name,
            revision=to,
        ) from exc
    except ResolutionError as exc:
        text = str(exc)
        if text.startswith("Multiple revisions start with"):
            prefix = exc.argument
            candidates = _prefix_candidates(rmap, prefix)
            raise _refuse(
                f"Revision prefix {prefix!r} is ambiguous: it matches {', '.join(candidates)}. Give more characters.",
                name,
                revision=to,
                candidates=candidates,
            ) from exc
        raise _refuse(f"Unknown revision {to!r}: {text}.", name, revision=to) from exc
    except RangeNotAncestorError as exc:
        raise _refuse(
            f"Revision {to!r} is not below the current heads ({', '.join(heads)}): it is not applied, so there is nothing to downgrade to.",
            name,
            revision=to,
            heads=heads,
        ) from exc
    except RevisionError as exc:
        text = str(exc)
        up = bool(relative and relative["steps"].startswith("+"))
        start = relative["symbol"] if up else ", ".join(heads)
        if text == "Ambiguous walk":
            message = (
                f"The relative step {to!r} is ambiguous: walking {'up' if up else 'down'} from {start} reaches a "
                "merge point with several parents (or a branch point with several children). "
                "Name the revision to downgrade to."
            )
        elif up and ("didn't produce" in text or text == "Walked too far"):
            message = f"The relative step {to!r} goes above the top of the history from {start}."
        elif "didn't produce" in text or text == "Walked too far":
            message = f"The relative step {to!r} goes below the base of the history from {', '.join(heads)}."
        else:
            message = f"Cannot resolve {to!r}: {text}."
        raise _refuse(message, name, revision=to) from exc
    if resolved is None or resolved == "base":
        return "base", steps
    return resolved.revision, steps


def plan_downgrade(
    target_name: str, to: str, current_heads: list[str], *, revision_map: RevisionMap | None = None
) -> DowngradePlan:
    """Plan a downgrade of `target_name` from `current_heads` to `to`.

    Raises RevisionResolutionError (with `.revision`) for: a malformed
    expression (`@`, `payments@`, a control character), no synced catalog,
    an empty database, current heads the scripts do not know, current heads
    that overlap (a row together with its own ancestor), an unknown
    revision, an ambiguous prefix (listing the candidates), a relative step
    that is ambiguous at a merge point or from several heads, a target that
    is not below the current heads, and nothing to downgrade.
    """
    to_input = to
    to = (to or "").strip()
    if not to:
        raise _refuse(
            "No downgrade target given: name a revision, a unique prefix, branch@rev, base or -N.", target_name
        )
    check_expression(target_name, to)
    if revision_map is None:
        target = Target.objects.filter(name=target_name).select_related("catalog").first()
        if target is None or target.last_synced_at is None:
            raise _refuse(
                f"Target {target_name!r} has no synced catalog: run sync_revisions first.", target_name, revision=to
            )
    heads = sorted(set(current_heads))
    if not heads:
        raise _refuse(
            f"Nothing to downgrade: target {target_name!r} has no applied revision.", target_name, revision=to
        )
    if revision_map is None:
        revision_map = revision_map_from_rows(target)
    unknown = [rev for rev in heads if rev not in revision_map._revision_map]
    if unknown:
        raise _refuse(
            f"The database holds revision(s) {', '.join(unknown)} that the scripts do not know; "
            "resolve that drift before planning a downgrade.",
            target_name,
            revision=unknown[0],
            heads=heads,
        )
    covered = overlapping_rows(revision_map, heads)
    if covered:
        keep = sorted(set(heads) - set(covered))
        raise _refuse(
            drift.explain_overlapping_versions(target_name, covered, keep).split("\n")[0]
            + f" Fix alembic_version first: check the schema is at {', '.join(keep)}, then run "
            f"`{drift.purge_command(keep)}`.",
            target_name,
            revision=sorted(covered)[0],
            heads=heads,
            reason="overlapping_versions",
        )
    to_revision, steps = _resolve(revision_map, target_name, to, heads)
    if to_revision != "base" and to_revision not in _ancestors(revision_map, heads):
        raise _refuse(
            f"Revision {to_revision} is not below the current heads ({', '.join(heads)}): it is not applied, "
            "so there is nothing to downgrade to.",
            target_name,
            revision=to_revision,
            heads=heads,
        )
    if not steps:
        why = "it is a current head" if to_revision in heads else "nothing applied depends on it"
        raise _refuse(
            f"Nothing to downgrade: going to {to_revision} from {', '.join(heads)} reverts no revision ({why}).",
            target_name,
            revision=to_revision,
            heads=heads,
        )
    return DowngradePlan(target=target_name, to_input=to_input, to_revision=to_revision, from_heads=heads, steps=steps)
