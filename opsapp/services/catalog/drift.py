"""Drift explanations: what is wrong between a database and its scripts, and what to do.

Plain text for people reading a cron mail or an admin page: each explanation
says what the state means and gives the Alembic command that resolves it.
Pure functions over plain data (and, for `drift_problems`, a synced Target).
"""

from __future__ import annotations

from dataclasses import dataclass

from opsapp.models import Target, TargetState


def _join(revisions: list[str] | tuple[str, ...]) -> str:
    return ", ".join(revisions) if revisions else "(none)"


def explain_script_errors(target_name: str, errors: list[dict[str, str]]) -> str:
    """One line per file that failed to import (or per problem with the directory as a whole)."""
    lines = [f"Target {target_name!r}: the script directory cannot be read completely, so the catalog was not updated."]
    for error in errors:
        where = error.get("file") or "script directory"
        lines.append(f"- {where}: {error.get('error', '')}")
    lines.append("Fix the file(s) above (Alembic itself fails on them too), then run sync_revisions again.")
    return "\n".join(lines)


def explain_unknown_revision(
    target_name: str, unknown: list[str], known_current: list[str], script_heads: list[str], revision_count: int
) -> str:
    """The database records revision(s) that no script defines (Alembic: "Can't locate revision identified by")."""
    ids = ", ".join(repr(rev) for rev in unknown)
    heads = " ".join(script_heads) or "<revision>"
    lines = [
        f"Target {target_name!r}: the database's alembic_version holds {ids}, which no script in the script "
        f"directory defines. Alembic fails on this database with \"Can't locate revision identified by "
        f"'{unknown[0]}'\", so upgrade, downgrade and history do not work against it.",
        "What it means: the database was migrated by code that is not deployed here (a newer release, another "
        "branch), or the revision file was deleted or renamed.",
        f"Revisions the scripts do know: {revision_count} in total; head(s): {_join(script_heads)}"
        + (f"; the database also holds known revision(s) {_join(known_current)}." if known_current else "."),
        "How to resolve:",
        f"  1. Preferred: deploy the code that contains {ids} (look for a file with revision = {unknown[0]!r}), "
        "then run sync_revisions again.",
        "  2. Only if you have checked which known revision(s) the schema really matches: "
        "`alembic stamp --purge <revision>...` empties alembic_version and records those revisions instead "
        f"(e.g. `alembic stamp --purge {heads}` when the schema is exactly at the scripts' head). Stamping runs "
        "no migration and changes no table other than alembic_version; if the schema does not really match, "
        "later upgrades will fail or do damage.",
    ]
    return "\n".join(lines)


def purge_command(keep: list[str]) -> str:
    """The Alembic command that leaves exactly `keep` in alembic_version (runs no migration)."""
    return f"alembic stamp --purge {' '.join(keep)}"


def explain_overlapping_versions(target_name: str, covered: dict[str, list[str]], keep: list[str]) -> str:
    """alembic_version holds a revision together with one of its own ancestors (overlapping rows).

    `covered` maps each redundant row to the held revision(s) that already
    include it; `keep` is what alembic_version should hold instead.
    """
    pairs = "; ".join(f"{rev} is an ancestor of {', '.join(newer)}" for rev, newer in sorted(covered.items()))
    first = sorted(covered)[0]
    lines = [
        f"Target {target_name!r}: alembic_version holds overlapping rows: {pairs}. A revision's row already "
        "implies every revision below it, so Alembic refuses this table: `alembic upgrade` fails with "
        f'"Requested revision {covered[first][0]} overlaps with other requested revisions {first}", '
        "and downgrades plan from the wrong revisions. The console refuses to plan a downgrade from it.",
        "What it means: a row was inserted by hand, or a stamp or a migration tool wrote alembic_version "
        "without removing the older row.",
        "How to resolve: check that the schema really is at "
        f"{', '.join(keep)}, then run `{purge_command(keep)}`. It empties alembic_version and records "
        f"{', '.join(keep)} alone; it runs no migration and changes no other table. Then run sync_revisions again.",
    ]
    return "\n".join(lines)


def merge_command(heads: list[str]) -> str:
    return f'alembic merge -m "merge heads" {" ".join(heads)}'


def explain_multiple_heads(target_name: str, script_heads: list[str], db_heads: list[str]) -> str:
    """The scripts have more than one head (Alembic's "Multiple head revisions are present")."""
    lines = [
        f"Target {target_name!r}: the scripts have {len(script_heads)} heads: {_join(script_heads)}. "
        '`alembic upgrade head` fails here with "Multiple head revisions are present"; '
        f"the database is at {_join(db_heads)}.",
        "If the branches are meant to stay separate (independent bases, expand/contract), upgrade with "
        "`alembic upgrade heads` or `alembic upgrade <branch>@head`.",
        f"Otherwise join them with a merge revision: {merge_command(script_heads)}",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class DriftProblem:
    code: str  # unknown_revision | overlapping_versions | unreachable | script_error | not_at_head | multiple_heads
    message: str


def drift_problems(target: Target, *, require_head: bool = False, single_head: bool = False) -> list[DriftProblem]:
    """What check_drift reports for a synced target (empty list: fine)."""
    problems: list[DriftProblem] = []
    heads = list(target.script_heads)
    current = list(target.current_heads)
    if target.state == TargetState.UNREACHABLE:
        problems.append(
            DriftProblem(
                "unreachable",
                f"{target.state_detail}\nCheck that the database is up and the URL and credentials are right.",
            )
        )
    elif target.state == TargetState.SCRIPT_ERROR:
        problems.append(DriftProblem("script_error", target.state_detail))
    elif target.state == TargetState.UNKNOWN_REVISION:
        problems.append(DriftProblem("unknown_revision", target.state_detail))
    elif target.state == TargetState.OVERLAPPING_VERSIONS:
        problems.append(DriftProblem("overlapping_versions", target.state_detail))
    if target.state not in (TargetState.UNREACHABLE, TargetState.SCRIPT_ERROR):
        # With an unknown revision or overlapping rows, "upgrade" would fail: the advice above comes first.
        blocked = target.state in (TargetState.UNKNOWN_REVISION, TargetState.OVERLAPPING_VERSIONS)
        if require_head and set(current) != set(heads) and not blocked:
            if not current:
                message = f"Target {target.name!r} has no alembic_version: run `alembic upgrade {'heads' if len(heads) > 1 else 'head'}`."
            else:
                message = (
                    f"Target {target.name!r} is at {_join(current)}, not at every head ({_join(heads)}); "
                    f"{target.pending_count} revision(s) pending: run `alembic upgrade {'heads' if len(heads) > 1 else 'head'}`."
                )
            problems.append(DriftProblem("not_at_head", message))
        if single_head and len(heads) > 1:
            problems.append(DriftProblem("multiple_heads", explain_multiple_heads(target.name, heads, current)))
    return problems
