"""The downgrade preview of a revision's page, from the synced rows, without Alembic.

`preview_downgrade` answers what `planner.plan_downgrade` answers for a full
revision id, but never builds Alembic's RevisionMap (seconds at 10k
revisions, paid again by every fresh worker) and never imports Alembic or
SQLAlchemy (a second or more on a fresh worker's first request). Anything
else goes to the planner, where Alembic's semantics rule.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from opsapp.models import Revision as RevisionRow
from opsapp.models import Target
from opsapp.services.catalog import topology
from opsapp.services.catalog.store import catalog_key
from opsapp.services.errors import RevisionResolutionError

_SIZE = 8


@dataclass(frozen=True)
class DowngradePlan:
    """What a downgrade of `target` to `to_input` reverts (planner.plan_downgrade or preview_downgrade)."""

    target: str
    to_input: str
    to_revision: str  # the resolved full id, or "base"
    from_heads: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)  # reverted revisions, in Alembic's order


_LOCK = threading.Lock()


def _plan(target_name: str, to: str, current_heads: list[str]) -> DowngradePlan:
    from opsapp.services.catalog import planner  # lazy: imports Alembic

    return planner.plan_downgrade(target_name, to, current_heads)


_GRAPH_CACHE: OrderedDict[tuple, topology.Graph | None] = OrderedDict()


def graph_from_rows(target: Target) -> topology.Graph | None:
    """The linear-time graph of `target`'s catalog (None if irregular), cached per catalog like the maps.

    Built in load order (by path), the order Alembic's map breaks ties in.
    """
    key = catalog_key(target)
    with _LOCK:
        if target.catalog_id is not None and key in _GRAPH_CACHE:
            _GRAPH_CACHE.move_to_end(key)
            return _GRAPH_CACHE[key]
    rows = RevisionRow.objects.filter(catalog_id=target.catalog_id).order_by("path", "revision")
    graph = topology.build_graph(list(rows.values_list("revision", "down_revisions", "depends_on", "branch_labels")))
    if target.catalog_id is not None:
        with _LOCK:
            _GRAPH_CACHE[key] = graph
            while len(_GRAPH_CACHE) > _SIZE:
                _GRAPH_CACHE.popitem(last=False)
    return graph


_STEPS_CACHE: OrderedDict[tuple, tuple[list[str] | None, bool]] = OrderedDict()


def _steps(target: Target, graph: topology.Graph, heads: list[str], to: str) -> tuple[list[str] | None, bool]:
    """(downgrade_steps, whether `to` is applied), remembered per catalog, heads and revision:
    a page viewed again costs a dictionary lookup, not a walk of the history (and targets on
    one directory at the same heads share the answer)."""
    key = (*catalog_key(target), tuple(heads), to)
    with _LOCK:
        if target.catalog_id is not None and key in _STEPS_CACHE:
            _STEPS_CACHE.move_to_end(key)
            return _STEPS_CACHE[key]
    applied = topology.applied_set(graph, heads)
    answer = (topology.downgrade_steps(graph, heads, to, applied=applied), to in applied)
    if target.catalog_id is not None:
        with _LOCK:
            _STEPS_CACHE[key] = answer
            while len(_STEPS_CACHE) > 64:
                _STEPS_CACHE.popitem(last=False)
    return answer


def preview_downgrade(target_name: str, to: str, current_heads: list[str]) -> DowngradePlan:
    """`plan_downgrade` for a revision's page: the same plan or refusal, from the synced rows.

    A page must not build Alembic's RevisionMap (seconds at 10k revisions,
    paid again by every fresh worker process). For a full revision id, the
    steps are Alembic's own downgrade collection and order, computed in
    linear time by `topology` (tests compare them with the map's); anything
    else (prefixes, labels, relative steps, irregular rows) goes to
    `plan_downgrade`. Raises RevisionResolutionError like it.
    """
    target = Target.objects.filter(name=target_name).select_related("catalog").first()
    heads = sorted(set(current_heads))
    if target is None or target.last_synced_at is None or not heads:
        return _plan(target_name, to, current_heads)
    graph = graph_from_rows(target)
    if graph is None or to not in graph.versioned or any(rev not in graph.versioned for rev in heads):
        return _plan(target_name, to, current_heads)
    steps, applied = _steps(target, graph, heads, to)
    if not applied:
        raise RevisionResolutionError(
            f"Revision {to!r} is not below the current heads ({', '.join(heads)}): it is not applied, "
            "so there is nothing to downgrade to.",
            target=target_name,
            revision=to,
            heads=heads,
        )
    if steps is None:
        return _plan(target_name, to, current_heads)
    if not steps:
        why = "it is a current head" if to in heads else "nothing applied depends on it"
        raise RevisionResolutionError(
            f"Nothing to downgrade: going to {to} from {', '.join(heads)} reverts no revision ({why}).",
            target=target_name,
            revision=to,
            heads=heads,
        )
    return DowngradePlan(target=target_name, to_input=to, to_revision=to, from_heads=heads, steps=steps)
