"""Linear-time graph facts of a revision history: heads, bases, flags and Alembic's walk order.

Alembic's `RevisionMap` computes the same facts, but building it and
walking it (`iterate_revisions("heads", "base")`) costs roughly n² at
10k+ revisions: `_normalize_depends_on` walks every ancestor of each
revision with a dependency, and `_topological_sort` recomputes whole
ancestor sets at every merge and scans every open head at every step.

Here the facts are computed from the `Script` objects Alembic itself loaded
(ids, `down_revision`, `branch_labels`, `depends_on` stay Alembic's), with
the same definitions and the same walk order, so the catalog (positions,
`show_revisions`) is unchanged; tests compare both on every history they
build. The walk reproduces `RevisionMap._topological_sort` exactly (see
`_walk`).

Anything irregular (a duplicate id, a reference to an unknown revision or
label, a label used twice, a cycle) returns None: the caller then lets
`RevisionMap` rule, so the user sees Alembic's own error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alembic.script import Script
from alembic.util import to_tuple


@dataclass
class Facts:
    """Graph facts of one history; `walk` is Alembic's heads-to-bases order."""

    walk: list[str]
    heads: list[str]
    bases: list[str]
    is_head: dict[str, bool]
    is_base: dict[str, bool]
    is_branch_point: dict[str, bool]
    is_merge_point: dict[str, bool]


def _dedupe(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def compute_facts(scripts: Sequence[Script]) -> Facts | None:
    """The facts of `scripts` (in Alembic's load order), or None when the graph is irregular."""
    order = [s.revision for s in scripts]
    by_id = {s.revision: s for s in scripts}
    if len(by_id) != len(order):
        return None
    # depends_on may name a branch label; Alembic resolves it to the revision declaring it.
    names = {rev: rev for rev in order}
    for rev in order:
        for label in by_id[rev]._orig_branch_labels:
            if label in names:
                return None
            names[label] = rev

    versioned: dict[str, tuple[str, ...]] = {}
    resolved: dict[str, tuple[str, ...]] = {}
    for rev in order:
        script = by_id[rev]
        downs = to_tuple(script.down_revision, default=())
        deps = to_tuple(script.dependencies, default=())
        if any(d not in by_id for d in downs) or any(d not in names for d in deps):
            return None
        versioned[rev] = downs
        resolved[rev] = tuple(names[d] for d in deps)

    topo_order = _kahn_order(order, versioned, resolved)
    if topo_order is None:
        return None
    normalized = _normalized_downs(order, topo_order, versioned, resolved)

    next_versioned: dict[str, set[str]] = {rev: set() for rev in order}
    has_any_child = dict.fromkeys(order, False)
    for rev in order:
        for down in versioned[rev]:
            next_versioned[down].add(rev)
        for down in _dedupe(versioned[rev] + resolved[rev]):
            has_any_child[down] = True
    real_heads = [rev for rev in order if not has_any_child[rev]]
    return Facts(
        walk=_walk(order, topo_order, normalized, real_heads),
        heads=[rev for rev in order if not next_versioned[rev]],
        bases=[rev for rev in order if by_id[rev].down_revision is None],
        is_head={rev: not next_versioned[rev] for rev in order},
        is_base={rev: by_id[rev].down_revision is None for rev in order},
        is_branch_point={rev: len(next_versioned[rev]) > 1 for rev in order},
        is_merge_point={rev: len(versioned[rev]) > 1 for rev in order},
    )


def _kahn_order(
    order: list[str], versioned: dict[str, tuple[str, ...]], resolved: dict[str, tuple[str, ...]]
) -> list[str] | None:
    """A topological order over down revisions and dependencies (parents first); None on a cycle."""
    missing = {rev: len(_dedupe(versioned[rev] + resolved[rev])) for rev in order}
    children: dict[str, list[str]] = {rev: [] for rev in order}
    for rev in order:
        for down in _dedupe(versioned[rev] + resolved[rev]):
            children[down].append(rev)
    ready = [rev for rev in order if not missing[rev]]
    result: list[str] = []
    while ready:
        rev = ready.pop()
        result.append(rev)
        for child in children[rev]:
            missing[child] -= 1
            if not missing[child]:
                ready.append(child)
    return result if len(result) == len(order) else None


def _normalized_downs(
    order: list[str],
    topo_order: list[str],
    versioned: dict[str, tuple[str, ...]],
    resolved: dict[str, tuple[str, ...]],
) -> dict[str, tuple[str, ...]]:
    """Alembic's `_normalized_down_revisions`: down revisions plus the dependencies no ancestor already has.

    Alembic walks every versioned ancestor of each revision with a
    dependency. A dependency can only be dropped when another revision
    declares it too, so ancestry is kept as a bitmask over those declarers
    only (a plain chain shares its parent's mask).
    """
    declarers: dict[str, list[str]] = {}
    for rev in order:
        for dep in resolved[rev]:
            declarers.setdefault(dep, []).append(rev)
    shared_declarers = dict.fromkeys(rev for revs in declarers.values() if len(revs) > 1 for rev in revs)
    bit = {rev: 1 << i for i, rev in enumerate(shared_declarers)}
    with_self: dict[str, int] = {}  # versioned ancestors-or-self among the declarers
    result: dict[str, tuple[str, ...]] = {}
    for rev in topo_order:
        downs = versioned[rev]
        if len(downs) == 1:
            above = with_self[downs[0]]
        else:
            above = 0
            for down in downs:
                above |= with_self[down]
        with_self[rev] = above | bit[rev] if rev in bit else above
        # Same construction as Alembic (a set, then removals), so the order of the tuple is the same too.
        kept = set(resolved[rev])
        if rev in bit and above:
            kept.difference_update(
                [dep for dep in resolved[rev] if any(other != rev and above & bit[other] for other in declarers[dep])]
            )
        result[rev] = _dedupe(downs + tuple(kept))
    return result


def _walk(
    order: list[str], topo_order: list[str], normalized: dict[str, tuple[str, ...]], real_heads: list[str]
) -> list[str]:
    """`RevisionMap._topological_sort(all, heads)` in near-linear time, same output.

    Alembic keeps the ancestor set of every open head and scans them all at
    each step. Here a head is emittable when no unemitted revision has it as
    a down revision (a counter). Only a revision with two or more children
    can be blocked, so ancestry is kept as a bitmask over those revisions
    only: a plain chain shares its parent's mask (no copy).
    """
    children: dict[str, list[str]] = {rev: [] for rev in order}
    for rev in order:
        for down in normalized[rev]:
            children[down].append(rev)
    bit = {rev: 1 << i for i, rev in enumerate(rev for rev in order if len(children[rev]) > 1)}
    ancestry: dict[str, int] = {}
    for rev in topo_order:
        downs = normalized[rev]
        if len(downs) == 1 and rev not in bit:
            ancestry[rev] = ancestry[downs[0]]
        else:
            mask = bit.get(rev, 0)
            for down in downs:
                mask |= ancestry[down]
            ancestry[rev] = mask
    pending = {rev: len(children[rev]) for rev in order}
    todo = set(order)
    heads = list(real_heads)
    open_heads = set(heads)
    output: list[str] = []
    idx = 0
    while heads:
        candidate = heads[idx]
        if pending[candidate]:
            # Another open head descends from the candidate: Alembic walks the first such head first.
            mask = bit[candidate]
            idx = next(j for j, head in enumerate(heads) if j != idx and ancestry[head] & mask)
            continue
        output.append(candidate)
        todo.discard(candidate)
        for down in normalized[candidate]:
            pending[down] -= 1
        to_add = [down for down in normalized[candidate] if down in todo and down not in open_heads]
        open_heads.discard(candidate)
        if not to_add:
            del heads[idx]
            idx = max(idx - 1, 0)
        else:
            heads[idx] = to_add[0]
            heads.extend(to_add[1:])
            open_heads.update(to_add)
    return output
