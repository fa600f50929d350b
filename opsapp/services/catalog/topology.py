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

Imports no Alembic module: revision pages use it, and a fresh worker would
otherwise pay for importing Alembic and SQLAlchemy on its first request.

Anything irregular (a duplicate id, a reference to an unknown revision or
label, a label used twice, a cycle) returns None: the caller then lets
`RevisionMap` rule, so the user sees Alembic's own error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alembic.script import Script


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


def to_tuple(value: Any) -> tuple:
    """`alembic.util.to_tuple(value, default=())`, without importing Alembic (a page must not pay for it)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(value)
    return (value,)


def _dedupe(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@dataclass
class Graph:
    """A history's edges as Alembic defines them; `order` is the load order (Alembic's tie-breaker)."""

    order: list[str]
    versioned: dict[str, tuple[str, ...]]  # down_revision
    resolved: dict[str, tuple[str, ...]]  # depends_on, labels resolved to revisions
    topo_order: list[str]  # parents first, over both kinds of edge
    normalized: dict[str, tuple[str, ...]]  # Alembic's _normalized_down_revisions


def build_graph(items: Sequence[tuple[str, Sequence[str], Sequence[str], Sequence[str]]]) -> Graph | None:
    """The graph of (revision, down revisions, depends_on, branch labels) in load order; None when irregular."""
    order = [item[0] for item in items]
    if len(set(order)) != len(order):
        return None
    # depends_on may name a branch label; Alembic resolves it to the revision declaring it.
    names = {rev: rev for rev in order}
    for rev, _, _, labels in items:
        for label in labels:
            if label in names:
                return None
            names[label] = rev
    ids = set(order)
    versioned: dict[str, tuple[str, ...]] = {}
    resolved: dict[str, tuple[str, ...]] = {}
    for rev, downs, deps, _ in items:
        if any(d not in ids for d in downs) or any(d not in names for d in deps):
            return None
        versioned[rev] = tuple(downs)
        resolved[rev] = tuple(names[d] for d in deps)
    topo_order = _kahn_order(order, versioned, resolved)
    if topo_order is None:
        return None
    normalized = _normalized_downs(order, topo_order, versioned, resolved)
    return Graph(order, versioned, resolved, topo_order, normalized)


def compute_facts(scripts: Sequence[Script]) -> Facts | None:
    """The facts of `scripts` (in Alembic's load order), or None when the graph is irregular."""
    graph = build_graph(
        [
            (
                s.revision,
                to_tuple(s.down_revision),
                to_tuple(s.dependencies),
                s._orig_branch_labels,
            )
            for s in scripts
        ]
    )
    if graph is None:
        return None
    order, versioned, resolved = graph.order, graph.versioned, graph.resolved
    next_versioned: dict[str, set[str]] = {rev: set() for rev in order}
    has_any_child = dict.fromkeys(order, False)
    for rev in order:
        for down in versioned[rev]:
            next_versioned[down].add(rev)
        for down in _dedupe(versioned[rev] + resolved[rev]):
            has_any_child[down] = True
    real_heads = [rev for rev in order if not has_any_child[rev]]
    return Facts(
        walk=_walk(graph, real_heads, set(order)),
        heads=[rev for rev in order if not next_versioned[rev]],
        bases=[rev for rev in order if not versioned[rev]],
        is_head={rev: not next_versioned[rev] for rev in order},
        is_base={rev: not versioned[rev] for rev in order},
        is_branch_point={rev: len(next_versioned[rev]) > 1 for rev in order},
        is_merge_point={rev: len(versioned[rev]) > 1 for rev in order},
    )


def downgrade_steps(
    graph: Graph, heads: Sequence[str], to: str, *, applied: set[str] | None = None
) -> list[str] | None:
    """What `alembic downgrade <to>` from `heads` reverts, in Alembic's order, for a revision id `to`.

    `RevisionMap._collect_downgrade_revisions` + `_topological_sort`:
    everything descending from `to`'s children (down revisions and
    dependencies) that is applied (an ancestor-or-self of a head). [] when
    `to` is a head; None when Alembic refuses (`to` is not applied, or only
    as a dependency) or the walk meets a shape the fast path does not handle
    (the caller then asks Alembic's own map, which words the refusal).
    """
    if applied is None:
        applied = applied_set(graph, heads)
    if to not in applied:
        return None
    all_children: dict[str, list[str]] = {}
    for rev in applied:
        for down in _dedupe(graph.versioned[rev] + graph.resolved[rev]):
            all_children.setdefault(down, []).append(rev)
    roots = [rev for rev in applied if to in graph.versioned[rev]]
    todo = _closure(roots, all_children)
    if not todo and to not in heads:
        return None  # applied only as a dependency: Alembic refuses ("Nothing to drop")
    start = [rev for rev in graph.order if rev in todo and rev in set(heads)]
    return _walk(graph, start, todo)


def applied_set(graph: Graph, heads: Sequence[str]) -> set[str]:
    """The heads and all their ancestors (down revisions and dependencies), as Alembic's downgrade sees them."""
    return _closure(heads, graph.normalized)


def _closure(start: Sequence[str], edges: dict[str, Sequence[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(edges.get(node, ()))
    return seen


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


def _walk(graph: Graph, start_heads: list[str], todo: set[str]) -> list[str] | None:
    """`RevisionMap._topological_sort(todo, heads)` in near-linear time, same output.

    Alembic keeps the ancestor set of every open head and scans them all at
    each step. Here a head is emittable when no unemitted revision of `todo`
    has it as a down revision (a counter). Only a revision with two or more
    children can be blocked, so ancestry is kept as a bitmask over those
    revisions only: a plain chain shares its parent's mask (no copy).
    None if a blocked revision has no bit (a shape outside Alembic's own
    histories: the caller asks Alembic).
    """
    normalized = graph.normalized
    todo = set(todo)
    children: dict[str, list[str]] = {rev: [] for rev in todo}
    for rev in todo:
        for down in normalized[rev]:
            if down in todo:
                children[down].append(rev)
    # An open head can be blocked only if it has two children, or is a starting head (one head
    # of a database may be a dependency of another).
    first = set(start_heads)
    bit = {
        rev: 1 << i
        for i, rev in enumerate(rev for rev in graph.order if rev in todo and (len(children[rev]) > 1 or rev in first))
    }
    ancestry: dict[str, int] = {}
    for rev in graph.topo_order:
        if rev not in todo:
            continue
        downs = [down for down in normalized[rev] if down in todo]
        if len(downs) == 1 and rev not in bit:
            ancestry[rev] = ancestry[downs[0]]
        else:
            mask = bit.get(rev, 0)
            for down in downs:
                mask |= ancestry[down]
            ancestry[rev] = mask
    pending = {rev: len(children[rev]) for rev in todo}
    heads = list(start_heads)
    open_heads = set(heads)
    output: list[str] = []
    idx = 0
    while heads:
        candidate = heads[idx]
        if pending[candidate]:
            # Another open head descends from the candidate: Alembic walks the first such head first.
            mask = bit.get(candidate)
            if mask is None:
                return None
            idx = next(j for j, head in enumerate(heads) if j != idx and ancestry[head] & mask)
            continue
        output.append(candidate)
        todo.discard(candidate)
        for down in normalized[candidate]:
            if down in pending:
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
    return output if not todo else None
