"""Revision graph: a deterministic layout and a server-rendered SVG.

Pure functions over synced `Revision` rows (or anything with the same
attributes): no request, no file import, no network. The layout puts one
revision per row (newest at the top), so labels, which sit to the right of
the lane area, can never overlap however long the history is. Lanes are
assigned the way `git log --graph` does it: a lane is reserved for the parent
a child is waiting for, so a vertical edge never runs through another node.

Everything is O(n log n) (a heap of free lanes); the SVG is built as a list of
strings and joined once, so 10,000 revisions render in well under a second.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html import escape

SVG_NS = "http://www.w3.org/2000/svg"

# Geometry (px). Labels use a monospace font so their width is predictable.
ROW_HEIGHT = 22
LANE_WIDTH = 18
NODE_RADIUS = 5
FONT_SIZE = 12
CHAR_WIDTH = 7.3  # an upper bound for 12px monospace glyphs
MARGIN_TOP = 16
GUTTER = 8  # left of lane 0
DEP_LANE_WIDTH = 8  # each depends_on arc has its own vertical lane right of the parent lanes
LABEL_GAP = 14
MESSAGE_CHARS = 70
MIN_RUN = 3  # "collapse linear runs" folds chains of at least this many plain revisions


@dataclass(frozen=True)
class GraphNode:
    """What the graph needs to know about one revision."""

    revision: str
    parents: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    branch_labels: tuple[str, ...] = ()
    message: str = ""
    is_head: bool = False
    is_base: bool = False
    is_branch_point: bool = False
    is_merge_point: bool = False
    applied: bool | None = False  # None: unknown (alembic_version names a revision the scripts lack)
    is_current: bool = False
    folded: int = 0  # > 0: this node stands for a collapsed linear run of `folded` revisions
    folded_oldest: str = ""  # the oldest revision of that run (`revision` is the newest)


@dataclass(frozen=True)
class EdgeRoute:
    """A parent link drawn from `child` down to `parent`, travelling in `lane`."""

    child: str
    parent: str
    lane: int


@dataclass
class Layout:
    order: list[str] = field(default_factory=list)  # display order: row 0 is the top
    row: dict[str, int] = field(default_factory=dict)
    lane: dict[str, int] = field(default_factory=dict)
    layer: dict[str, int] = field(default_factory=dict)  # longest path from a base
    lanes: int = 0
    edges: list[EdgeRoute] = field(default_factory=list)
    dep_edges: list[tuple[str, str]] = field(default_factory=list)  # (revision, dependency)
    dep_lane: list[int] = field(default_factory=list)  # lane of each dep_edges arc (same index)
    dep_lanes: int = 0


def nodes_from_revisions(revisions: Iterable[object], *, applied_known: bool = True) -> list[GraphNode]:
    """Adapt synced `Revision` rows (or look-alikes) to `GraphNode`s.

    `applied_known=False` (the database is at a revision the scripts do not know, or unreachable): no
    node is drawn as applied or pending, they are drawn as unknown.
    """
    return [
        GraphNode(
            revision=r.revision,
            parents=tuple(r.down_revisions or ()),
            depends_on=tuple(r.depends_on or ()),
            branch_labels=tuple(r.branch_labels or ()),
            message=r.message or "",
            is_head=bool(r.is_head),
            is_base=bool(r.is_base),
            is_branch_point=bool(r.is_branch_point),
            is_merge_point=bool(r.is_merge_point),
            applied=bool(r.applied) if applied_known else None,
            is_current=bool(r.is_current),
        )
        for r in revisions
    ]


def _layers(nodes: Sequence[GraphNode], known: dict[str, GraphNode]) -> tuple[dict[str, int], list[str]]:
    """Longest-path layer of each node (bases are 0) and a topological order (Kahn)."""
    children: dict[str, list[str]] = {n.revision: [] for n in nodes}
    indegree: dict[str, int] = {}
    for n in nodes:
        parents = [p for p in dict.fromkeys(n.parents) if p in known]
        indegree[n.revision] = len(parents)
        for p in parents:
            children[p].append(n.revision)
    layer = {n.revision: 0 for n in nodes}
    ready = [n.revision for n in nodes if indegree[n.revision] == 0]
    ready.reverse()
    topo: list[str] = []
    while ready:
        rev = ready.pop()
        topo.append(rev)
        for child in children[rev]:
            layer[child] = max(layer[child], layer[rev] + 1)
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if len(topo) < len(nodes):  # a cycle cannot come from Alembic, but never loop or crash on one
        seen = set(topo)
        top = max(layer.values(), default=0) + 1
        for n in nodes:
            if n.revision not in seen:
                layer[n.revision] = top
                topo.append(n.revision)
    return layer, topo


def compute_layout(nodes: Sequence[GraphNode]) -> Layout:
    """Rows (one per revision, newest first) and lanes for `nodes`. Deterministic."""
    known = {n.revision: n for n in nodes}
    layer, topo = _layers(nodes, known)
    topo_index = {rev: i for i, rev in enumerate(topo)}
    # Newest first: higher layer first; within a layer, later in topological order first.
    order = sorted(known, key=lambda rev: (-layer[rev], -topo_index[rev], rev))
    layout = Layout(order=order, layer=layer, row={rev: i for i, rev in enumerate(order)})

    by_label = {label: n.revision for n in nodes for label in n.branch_labels}
    waiting: dict[str, int] = {}  # revision id -> lane reserved for it by an already placed child
    free: list[int] = []  # heap of free lanes; the smallest is reused first
    next_lane = 0

    def take_free() -> int:
        nonlocal next_lane
        if free:
            return heapq.heappop(free)
        next_lane += 1
        return next_lane - 1

    for rev in order:
        node = known[rev]
        lane = waiting.pop(rev, None)
        if lane is None:
            lane = take_free()
        layout.lane[rev] = lane
        parents = [p for p in dict.fromkeys(node.parents) if p in known]
        own_lane_used = False
        for parent in parents:
            if parent in waiting:
                # Another child already reserved a lane for this parent: join it.
                layout.edges.append(EdgeRoute(rev, parent, waiting[parent]))
            elif not own_lane_used:
                waiting[parent] = lane
                own_lane_used = True
                layout.edges.append(EdgeRoute(rev, parent, lane))
            else:
                extra = take_free()
                waiting[parent] = extra
                layout.edges.append(EdgeRoute(rev, parent, extra))
        if not own_lane_used:
            heapq.heappush(free, lane)
        for dep in dict.fromkeys(node.depends_on):
            # Like Alembic's RevisionMap, a branch label in depends_on names the revision carrying it.
            dep = dep if dep in known else by_label.get(dep, "")
            if dep and dep != rev:
                layout.dep_edges.append((rev, dep))
    layout.lanes = max(next_lane, 1)
    layout.dep_lane, layout.dep_lanes = _dep_lanes([(layout.row[a], layout.row[b]) for a, b in layout.dep_edges])
    return layout


def _dep_lanes(spans: Sequence[tuple[int, int]]) -> tuple[list[int], int]:
    """A lane for each depends_on arc (its rows `spans`): arcs whose row ranges overlap never share one.

    Interval colouring, shortest arcs nearest the nodes: arcs are placed by their top row, each
    takes the smallest lane free from that row on (a lane frees one row after its arc ends, so two
    arcs never meet end to end on one line).
    """
    order = sorted(range(len(spans)), key=lambda i: (min(spans[i]), max(spans[i]), i))
    lanes = [0] * len(spans)
    busy: list[tuple[int, int]] = []  # heap of (last row, lane)
    free: list[int] = []
    count = 0
    for i in order:
        top, bottom = min(spans[i]), max(spans[i])
        while busy and busy[0][0] < top:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, count = count, count + 1
        lanes[i] = lane
        heapq.heappush(busy, (bottom, lane))
    return lanes, count


def collapse_runs(nodes: Sequence[GraphNode], *, keep: Iterable[str] = (), min_run: int = MIN_RUN) -> list[GraphNode]:
    """Fold every chain of at least `min_run` plain revisions into one node carrying the count.

    A plain revision has exactly one parent and one child (so heads, bases, branch points and
    merges are never folded), no branch label, no depends_on arc at either end, is not current,
    is not in `keep` and has the same applied state as its run. The folded node keeps the newest
    revision's id (its children still point at it) and the oldest one's parents.
    """
    known = {n.revision: n for n in nodes}
    by_label = {label: n.revision for n in nodes for label in n.branch_labels}
    children: dict[str, list[str]] = {rev: [] for rev in known}
    dep_ends: set[str] = set()
    for n in nodes:
        for p in dict.fromkeys(n.parents):
            if p in known:
                children[p].append(n.revision)
        for dep in n.depends_on:
            dep = dep if dep in known else by_label.get(dep, "")
            if dep:
                dep_ends.update((dep, n.revision))
    kept = set(keep)

    def plain(n: GraphNode) -> bool:
        parents = [p for p in dict.fromkeys(n.parents) if p in known]
        return (
            len(parents) == 1
            and len(children[n.revision]) == 1
            and not (n.is_head or n.is_base or n.is_branch_point or n.is_merge_point or n.is_current)
            and not n.branch_labels
            and n.revision not in dep_ends
            and n.revision not in kept
        )

    def link(older: GraphNode, newer: GraphNode) -> bool:
        """`newer` continues a run that `older` is in."""
        return plain(older) and plain(newer) and older.applied == newer.applied

    run_of: dict[str, list[str]] = {}  # newest revision of a run -> the run, newest first
    folded: set[str] = set()
    for n in nodes:
        if not plain(n) or n.revision in folded:
            continue
        child = known[children[n.revision][0]]
        if link(n, child):
            continue  # not the newest of its run: the run is walked from its newest end
        run = [n.revision]
        while True:
            older = known[run[-1]]
            parent = known[next(p for p in older.parents if p in known)]
            if not link(parent, older):
                break
            run.append(parent.revision)
        if len(run) >= min_run:
            run_of[n.revision] = run
            folded.update(run)
    out: list[GraphNode] = []
    for n in nodes:
        if n.revision in run_of:
            run = run_of[n.revision]
            oldest = known[run[-1]]
            out.append(
                GraphNode(
                    revision=n.revision,
                    parents=oldest.parents,
                    message=f"{len(run)} revisions, {run[-1][:12]} … {n.revision[:12]}",
                    applied=n.applied,
                    folded=len(run),
                    folded_oldest=oldest.revision,
                )
            )
        elif n.revision not in folded:
            out.append(n)
    return out


def node_id(revision: str) -> str:
    """The SVG element id of a revision's node: the page's jump links point at it (`#rev-…`)."""
    return "rev-" + revision


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def node_label(node: GraphNode) -> str:
    """The text shown next to a node: short id, branch labels, start of the message."""
    if node.folded:
        return f"┆ {node.message} (collapsed)"
    text = node.revision[:12]
    if node.branch_labels:
        text += " (" + ", ".join(node.branch_labels) + ")"
    message = " ".join(node.message.split())
    if message:
        if len(message) > MESSAGE_CHARS:
            message = message[: MESSAGE_CHARS - 1] + "…"
        text += "  " + message
    return text


def node_classes(node: GraphNode) -> str:
    classes = ["node", "unknown" if node.applied is None else "applied" if node.applied else "pending"]
    for flag, name in (
        (node.is_head, "head"),
        (node.is_base, "base"),
        (node.is_branch_point, "branch-point"),
        (node.is_merge_point, "merge-point"),
        (node.is_current, "current"),
        (bool(node.folded), "run"),
    ):
        if flag:
            classes.append(name)
    return " ".join(classes)


STYLE = """
.ops-graph text{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;fill:var(--body-fg,#333);dominant-baseline:middle}
.ops-graph .edge{fill:none;stroke:#8a9bb0;stroke-width:1.5}
.ops-graph .dep-edge{fill:none;stroke:#b07d2b;stroke-width:1.2;stroke-dasharray:4 3}
.ops-graph .node .mark{fill:#fff;stroke:#417690;stroke-width:2}
.ops-graph .node.applied .mark{fill:#417690}
.ops-graph .node.unknown .mark{fill:#fff;stroke:#999;stroke-dasharray:2 2}
.ops-graph .node.head .mark{stroke:#2e7d32;stroke-width:3}
.ops-graph .node.base .mark{stroke:#6a1b9a}
.ops-graph .node.branch-point .mark{stroke:#ef6c00}
.ops-graph .node.merge-point .mark{stroke:#c62828}
.ops-graph .node.run .mark{fill:#fff;stroke:#8a9bb0;stroke-width:2}
.ops-graph .node.run.applied .mark{fill:#c5d3df}
.ops-graph .node.run text{fill:var(--body-quiet-color,#666);font-style:italic}
.ops-graph .node .ring{fill:none;stroke:none}
.ops-graph .node:target .ring{stroke:#d81b60;stroke-width:3}
.ops-graph .node:target text{font-weight:bold}
.ops-graph .node{scroll-margin-top:40vh}
.ops-graph .node.current .ring{stroke:#f9a825;stroke-width:4}
.ops-graph .node.current text{font-weight:bold}
.ops-graph a:hover text{text-decoration:underline}
"""


def _mark(node: GraphNode, x: float, y: float) -> str:
    r = NODE_RADIUS
    if node.folded:  # a tall pill: several revisions stacked in one row
        return f'<rect class="mark" x="{_fmt(x - 3)}" y="{_fmt(y - r - 3)}" width="6" height="{2 * r + 6}" rx="3"/>'
    if node.is_base:
        return f'<rect class="mark" x="{_fmt(x - r)}" y="{_fmt(y - r)}" width="{2 * r}" height="{2 * r}"/>'
    if node.is_merge_point:
        return f'<rect class="mark" x="{_fmt(x - r)}" y="{_fmt(y - r)}" width="{2 * r}" height="{2 * r}" transform="rotate(45 {_fmt(x)} {_fmt(y)})"/>'
    return f'<circle class="mark" cx="{_fmt(x)}" cy="{_fmt(y)}" r="{r}"/>'


def render_svg(
    nodes: Sequence[GraphNode],
    *,
    href: Callable[[str], str] | None = None,
    run_href: Callable[[GraphNode], str] | None = None,
    layout: Layout | None = None,
    title: str = "Revision graph",
) -> str:
    """The whole graph as one inline `<svg>` element (a string, already escaped).

    One `<g class="node ..." data-revision=...>` per revision (mark, label and
    a link from `href(revision)`), one `<path class="edge">` per parent link and
    one dashed `<path class="dep-edge">` per resolvable depends_on, each in its own
    vertical lane between the parent lanes and the labels. Each node group has the
    id `node_id(revision)`; a collapsed run links to `run_href(node)` instead.
    """
    layout = layout or compute_layout(nodes)
    known = {n.revision: n for n in nodes}
    lane_x = [GUTTER + LANE_WIDTH / 2 + i * LANE_WIDTH for i in range(layout.lanes)]
    dep_x0 = GUTTER + layout.lanes * LANE_WIDTH + DEP_LANE_WIDTH / 2
    label_x = GUTTER + layout.lanes * LANE_WIDTH + layout.dep_lanes * DEP_LANE_WIDTH + LABEL_GAP
    half = ROW_HEIGHT / 2

    def xy(rev: str) -> tuple[float, float]:
        return lane_x[layout.lane[rev]], MARGIN_TOP + layout.row[rev] * ROW_HEIGHT + half

    labels = {rev: node_label(known[rev]) for rev in layout.order}
    longest = max((len(t) for t in labels.values()), default=0)
    width = int(label_x + longest * CHAR_WIDTH + 20)
    height = int(MARGIN_TOP * 2 + len(layout.order) * ROW_HEIGHT)

    out: list[str] = [
        f'<svg xmlns="{SVG_NS}" class="ops-graph" width="{width}" height="{height}" '
        # "group", not "img": the nodes inside are links (an img may hold no interactive content).
        f'viewBox="0 0 {width} {height}" role="group" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>",
        '<g class="edges">',
    ]
    for edge in layout.edges:
        xc, yc = xy(edge.child)
        xp, yp = xy(edge.parent)
        xw = lane_x[edge.lane]
        points = [(xc, yc)]
        if xw != xc:
            points.append((xw, yc + half))
        if xw != xp:
            points.append((xw, yp - half))
        points.append((xp, yp))
        d = "M" + " L".join(f"{_fmt(x)} {_fmt(y)}" for x, y in points)
        out.append(f'<path class="edge" data-from="{escape(edge.parent)}" data-to="{escape(edge.child)}" d="{d}"/>')
    for (rev, dep), dep_lane in zip(layout.dep_edges, layout.dep_lane, strict=True):
        x1, y1 = xy(rev)
        x2, y2 = xy(dep)
        xl = dep_x0 + dep_lane * DEP_LANE_WIDTH
        # Out to the arc's own lane on the revision's row, along the lane, back in on the dependency's row.
        d = f"M{_fmt(x1)} {_fmt(y1)} L{_fmt(xl)} {_fmt(y1)} L{_fmt(xl)} {_fmt(y2)} L{_fmt(x2)} {_fmt(y2)}"
        out.append(
            f'<path class="dep-edge" data-from="{escape(dep)}" data-to="{escape(rev)}" data-lane="{dep_lane}" d="{d}"/>'
        )
    out.append("</g>")
    out.append('<g class="nodes">')
    for rev in layout.order:
        node = known[rev]
        x, y = xy(rev)
        tip = f"{rev}{' (' + ', '.join(node.branch_labels) + ')' if node.branch_labels else ''}: {node.message}"
        if node.folded:
            tip = f"{node.message}: open the full graph at this run"
        out.append(f'<g class="{node_classes(node)}" data-revision="{escape(rev)}" id="{escape(node_id(rev))}">')
        out.append(f"<title>{escape(tip)}</title>")
        if node.folded:
            link = run_href(node) if run_href else ""
        else:
            link = href(rev) if href else ""
        if link:
            out.append(f'<a href="{escape(link)}">')
        out.append(f'<circle class="ring" cx="{_fmt(x)}" cy="{_fmt(y)}" r="{NODE_RADIUS + 4}"/>')
        out.append(_mark(node, x, y))
        out.append(f'<text x="{_fmt(label_x)}" y="{_fmt(y)}">{escape(labels[rev])}</text>')
        if link:
            out.append("</a>")
        out.append("</g>")
    out.append("</g></svg>")
    return "".join(out)


LEGEND_ITEMS = (
    (GraphNode("legend-applied", applied=True), "applied in the database"),
    (GraphNode("legend-pending"), "pending (not applied)"),
    (GraphNode("legend-unknown", applied=None), "unknown (database revision not in scripts)"),
    (GraphNode("legend-current", applied=True, is_current=True), "current (in alembic_version)"),
    (GraphNode("legend-head", is_head=True), "head"),
    (GraphNode("legend-base", is_base=True), "base"),
    (GraphNode("legend-branch", is_branch_point=True), "branch point"),
    (GraphNode("legend-merge", is_merge_point=True), "merge point"),
    (GraphNode("legend-run", folded=MIN_RUN), "collapsed linear run (count shown)"),
)


def render_legend(columns: int = 3, column_width: int = 370) -> str:
    """A small SVG legend matching the node classes and the two edge styles, in `columns` columns."""
    row = 20
    # Each entry is drawn around y = 0 and moved into place by its group's transform.
    entries = [
        (
            f'<g class="{node_classes(node)}"><circle class="ring" cx="14" cy="0" r="{NODE_RADIUS + 4}"/>'
            f"{_mark(node, 14, 0)}</g>",
            text,
        )
        for node, text in LEGEND_ITEMS
    ]
    entries.append(('<path class="edge" d="M4 0 L24 0"/>', "parent link (down_revision)"))
    entries.append(('<path class="dep-edge" d="M4 0 L24 0"/>', "depends_on (each in its own lane)"))
    per_column = -(-len(entries) // columns)
    height = row * per_column + 8
    width = column_width * columns
    out = [
        f'<svg xmlns="{SVG_NS}" class="ops-graph ops-graph-legend" width="{width}" height="{height}" role="img" aria-label="Legend">',
        f"<style>{STYLE}</style>",
    ]
    for i, (drawing, text) in enumerate(entries):
        x0 = (i // per_column) * column_width
        y = 14 + (i % per_column) * row
        out.append(f'<g transform="translate({x0} {y})">')
        out.append(drawing)
        out.append(f'<text x="34" y="0">{escape(text)}</text></g>')
    out.append("</svg>")
    return "".join(out)
