"""The revision graph: layout properties and the server-rendered SVG, parsed with xml.etree."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from alembic import command
from django.urls import reverse

from opsapp.demo.history_gen import generate_history, plan_history
from opsapp.models import Revision
from opsapp.services.alembic_api import connect, make_config
from opsapp.services.catalog import graph
from opsapp.services.catalog.store import revisions_of
from opsapp.services.catalog.sync import sync_target
from opsapp.targets import get_target

NS = {"svg": graph.SVG_NS}


@pytest.fixture(autouse=True)
def _only_test_targets(settings) -> None:
    settings.OPS_TARGETS = {}


def stamp(name: str, *revisions: str) -> None:
    config = get_target(name)
    with connect(config) as conn:
        command.stamp(make_config(config, connection=conn), list(revisions))
        conn.commit()


def nodes_from_plan(n: int, merges: int, seed: int = 0) -> list[graph.GraphNode]:
    """GraphNodes straight from history_gen's plan (no files, no database)."""

    def tup(value) -> tuple[str, ...]:
        if value is None:
            return ()
        return (value,) if isinstance(value, str) else tuple(value)

    return [
        graph.GraphNode(
            revision=spec.revision,
            parents=tup(spec.down),
            depends_on=tup(spec.depends_on),
            branch_labels=tup(spec.branch_labels),
            message=spec.message,
        )
        for spec in plan_history(n, merges, seed)
    ]


def main_svg(html: str) -> ET.Element:
    """The graph's <svg> element from a page (the legend is a separate, smaller <svg>)."""
    match = re.search(r'<svg xmlns="http://www.w3.org/2000/svg" class="ops-graph" .*?</svg>', html, re.S)
    assert match, "no graph SVG in the page"
    return ET.fromstring(match.group(0))


def parsed(svg: ET.Element) -> tuple[dict[str, ET.Element], set[tuple[str, str]], set[tuple[str, str]]]:
    nodes = {g.get("data-revision"): g for g in svg.iterfind(".//svg:g", NS) if "node" in g.get("class", "").split()}
    edges = [p for p in svg.iterfind(".//svg:path", NS) if p.get("class") == "edge"]
    deps = {
        (p.get("data-from"), p.get("data-to")) for p in svg.iterfind(".//svg:path", NS) if p.get("class") == "dep-edge"
    }
    pairs = {(p.get("data-from"), p.get("data-to")) for p in edges}
    assert len(pairs) == len(edges), "an edge is drawn twice"
    return nodes, pairs, deps


def classes(node: ET.Element) -> set[str]:
    return set(node.get("class", "").split())


def label_boxes(svg: ET.Element) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of every label, from its coordinates, font size and a monospace glyph width."""
    boxes = []
    for text in svg.iterfind(".//svg:g/svg:a/svg:text", NS):
        x, y = float(text.get("x")), float(text.get("y"))
        width = len(text.text or "") * graph.CHAR_WIDTH
        boxes.append((x, y - graph.FONT_SIZE / 2, x + width, y + graph.FONT_SIZE / 2))
    return boxes


def assert_no_label_overlaps(svg: ET.Element) -> None:
    boxes = sorted(label_boxes(svg), key=lambda b: (b[1], b[0]))
    assert boxes
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        for ox0, oy0, ox1, _oy1 in boxes[i + 1 :]:
            if oy0 >= y1:  # sorted by top edge: nothing further down can overlap
                break
            assert ox0 >= x1 or ox1 <= x0, f"labels overlap at y={y0}"
    # Labels also stay clear of every node mark (they sit right of the lane area).
    rightmost_mark = max(
        float(c.get("cx")) + float(c.get("r")) for c in svg.iterfind(".//svg:circle", NS) if c.get("class") == "ring"
    )
    assert min(b[0] for b in boxes) > rightmost_mark


# ------------------------------------------------------------------ pure layout
def test_every_revision_gets_its_own_row_and_parents_sit_below_children():
    nodes = nodes_from_plan(300, 30)
    layout = graph.compute_layout(nodes)
    assert sorted(layout.row.values()) == list(range(300))
    for node in nodes:
        for parent in node.parents:
            assert layout.row[parent] > layout.row[node.revision]


def test_no_edge_runs_through_another_revision():
    nodes = nodes_from_plan(300, 30, seed=3)
    layout = graph.compute_layout(nodes)
    occupied = {(layout.lane[rev], layout.row[rev]) for rev in layout.order}
    for edge in layout.edges:
        top, bottom = layout.row[edge.child], layout.row[edge.parent]
        for row in range(top + 1, bottom):
            assert (edge.lane, row) not in occupied, f"{edge} crosses a node at row {row}"


def test_the_layout_and_svg_are_deterministic():
    nodes = nodes_from_plan(120, 10, seed=7)
    assert graph.render_svg(nodes) == graph.render_svg(list(nodes))


def test_labels_never_overlap_in_a_300_revision_history_with_30_merges():
    nodes = nodes_from_plan(300, 30, seed=1)
    svg = ET.fromstring(graph.render_svg(nodes, href=lambda rev: f"/r/{rev}"))
    assert_no_label_overlaps(svg)


def test_a_depends_on_given_as_a_branch_label_is_drawn_as_a_dependency_edge():
    nodes = [
        graph.GraphNode("a", ()),
        graph.GraphNode("b", ("a",), branch_labels=("feature",)),
        graph.GraphNode("c", ("a",), depends_on=("feature",)),
        graph.GraphNode("d", ("b", "c"), depends_on=("missing",)),
    ]
    _, pairs, deps = parsed(ET.fromstring(graph.render_svg(nodes)))
    assert deps == {("b", "c")}
    assert pairs == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}


def test_a_10000_revision_history_renders_every_node():
    nodes = nodes_from_plan(10_000, 400, seed=2)
    svg = graph.render_svg(nodes, href=lambda rev: f"/r/{rev}")
    assert svg.count('<g class="node ') == 10_000
    assert svg.count('class="edge"') == sum(len(n.parents) for n in nodes)


# ------------------------------------------------------------------ the admin page
@pytest.mark.django_db
def test_the_graph_page_draws_every_revision_and_parent_link_of_the_branchy_history(
    client, admin_user, pg_url, branchy_scripts, configure_target
):
    configure_target("branchy", pg_url, branchy_scripts.ini)
    stamp("branchy", "g7", "x1")
    target = sync_target("branchy")
    client.force_login(admin_user)
    response = client.get(reverse("admin:opsapp_target_graph", args=[target.pk]))
    assert response.status_code == 200
    svg = main_svg(response.content.decode())
    nodes, pairs, deps = parsed(svg)
    rows = {r.revision: r for r in Revision.objects.filter(catalog_id=target.catalog_id)}
    assert set(nodes) == set(rows) == {"a1", "b2", "c3", "d4", "e5", "f6", "g7", "h8", "x1"}
    assert pairs == {(p, r.revision) for r in rows.values() for p in r.down_revisions}
    assert deps == {("c3", "e5")}
    assert {rev for rev, g in nodes.items() if "current" in classes(g)} == {"g7", "x1"}
    assert {rev for rev, g in nodes.items() if "head" in classes(g)} == {"h8", "x1"}
    assert {rev for rev, g in nodes.items() if "base" in classes(g)} == {"a1", "x1"}
    assert {rev for rev, g in nodes.items() if "branch-point" in classes(g)} == {"b2"}
    assert {rev for rev, g in nodes.items() if "merge-point" in classes(g)} == {"g7"}
    assert {rev for rev, g in nodes.items() if "pending" in classes(g)} == {"h8"}
    for rev, g in nodes.items():
        link = g.find("svg:a", NS)
        # The revision page of this target's position on the shared catalog.
        assert link.get("href") == reverse("admin:opsapp_revision_change", args=[rows[rev].pk]) + f"?target={target.pk}"
        assert link.find("svg:text", NS).text.startswith(rev)
    assert "c3 (left)" in {t.text.split("  ")[0] for t in svg.iterfind(".//svg:text", NS)}
    page = response.content.decode()
    assert "merge point" in page and "branch point" in page  # the legend
    assert "<script" not in page.split('id="content-main"', 1)[1]  # server-rendered, no JS


@pytest.mark.django_db
def test_the_graph_page_draws_a_300_revision_history_with_30_merges(
    client, admin_user, pg_url, script_dir_factory, configure_target
):
    sd = script_dir_factory()
    revisions = generate_history(sd, 300, merges=30, seed=5)
    configure_target("big", pg_url, sd.ini)
    stamp("big", revisions[150])
    target = sync_target("big")
    assert target.revision_count == 300
    client.force_login(admin_user)
    response = client.get(reverse("admin:opsapp_target_graph", args=[target.pk]))
    assert response.status_code == 200
    svg = main_svg(response.content.decode())
    nodes, pairs, _ = parsed(svg)
    rows = list(Revision.objects.filter(catalog_id=target.catalog_id))
    assert set(nodes) == {r.revision for r in rows}
    assert pairs == {(p, r.revision) for r in rows for p in r.down_revisions}
    assert sum(1 for g in nodes.values() if "merge-point" in classes(g)) == 30
    assert {rev for rev, g in nodes.items() if "current" in classes(g)} == {revisions[150]}
    assert_no_label_overlaps(svg)


# ------------------------------------------------------------------ overview: collapse, jumps, arc lanes
def structure(nodes: list[graph.GraphNode]) -> tuple[set[str], set[str], set[str], set[str]]:
    """Heads, bases, branch points and merge points, from the parent links alone."""
    known = {n.revision for n in nodes}
    children: dict[str, int] = dict.fromkeys(known, 0)
    for n in nodes:
        for p in set(n.parents):
            children[p] += 1
    heads = {rev for rev, count in children.items() if count == 0}
    bases = {n.revision for n in nodes if not n.parents}
    branch_points = {rev for rev, count in children.items() if count > 1}
    merges = {n.revision for n in nodes if len(n.parents) > 1}
    return heads, bases, branch_points, merges


def test_collapsing_linear_runs_cuts_the_rows_and_keeps_every_head_branch_point_and_merge():
    nodes = nodes_from_plan(300, 5, seed=4)  # five merges over 300 revisions: chains of ~10 and a long tail
    collapsed = graph.collapse_runs(nodes)
    svg = ET.fromstring(graph.render_svg(collapsed, href=lambda rev: f"/r/{rev}", run_href=lambda n: "#"))
    drawn, pairs, deps = parsed(svg)
    assert len(drawn) < len(nodes) // 3, f"{len(drawn)} rows for {len(nodes)} revisions"
    runs = {rev: g for rev, g in drawn.items() if "run" in classes(g)}
    assert runs
    # Every revision is either drawn or counted in exactly one run.
    assert len(drawn) - len(runs) + sum(n.folded for n in collapsed) == len(nodes)
    assert all(n.folded >= graph.MIN_RUN for n in collapsed if n.folded)
    heads, bases, branch_points, merges = structure(nodes)
    for rev in heads | bases | branch_points | merges:
        assert rev in drawn and rev not in runs, f"{rev} was folded away"
    # Every depends_on arc keeps both its ends.
    original_deps = {(d, rev) for rev, d in graph.compute_layout(nodes).dep_edges}
    assert deps == original_deps
    # A run's label says how many revisions it holds.
    for node in collapsed:
        if node.folded:
            assert f"{node.folded} revisions" in graph.node_label(node)
    # Parent links still connect: each run hangs between its oldest member's parent and the newest's child.
    assert all(p in drawn for p, _ in pairs) and all(c in drawn for _, c in pairs)
    assert_no_label_overlaps(svg)


def test_collapse_never_folds_the_current_revision_or_a_kept_one():
    chain = [graph.GraphNode("r0", (), applied=True)]
    for i in range(1, 10):
        chain.append(graph.GraphNode(f"r{i}", (f"r{i - 1}",), applied=i <= 6, is_current=i == 6))
    folded = graph.collapse_runs(chain)
    drawn = {n.revision for n in folded}
    assert {"r0", "r6", "r9"} <= drawn
    assert [n.folded for n in folded if n.folded] == [5]  # r1..r5 (r7, r8 are too short a run)
    assert "r3" in {n.revision for n in graph.collapse_runs(chain, keep=["r3"])}


def test_depends_on_arcs_that_overlap_get_distinct_lanes_right_of_the_parent_lanes():
    nodes = nodes_from_plan(300, 30, seed=1)
    layout = graph.compute_layout(nodes)
    assert len(layout.dep_edges) >= 5
    spans = [sorted((layout.row[a], layout.row[b])) for a, b in layout.dep_edges]
    for i in range(len(spans)):
        for j in range(i + 1, len(spans)):
            (t1, b1), (t2, b2) = spans[i], spans[j]
            if t1 <= b2 and t2 <= b1:
                assert layout.dep_lane[i] != layout.dep_lane[j], f"arcs {i} and {j} overlap in one lane"
    svg = ET.fromstring(graph.render_svg(nodes))
    rightmost_node = max(float(c.get("cx")) for c in svg.iterfind(".//svg:circle", NS) if c.get("class") == "ring")
    lanes_x = set()
    for path in svg.iterfind(".//svg:path", NS):
        if path.get("class") == "dep-edge":
            x = float(path.get("d").split(" L")[1].split()[0])  # the vertical run of the arc
            assert x > rightmost_node
            lanes_x.add((path.get("data-lane"), x))
    assert len(lanes_x) == layout.dep_lanes == len({lane for lane, _ in lanes_x})


def test_the_legend_explains_unknown_nodes_and_collapsed_runs():
    legend = ET.fromstring(graph.render_legend())
    texts = " ".join(t.text for t in legend.iterfind(".//svg:text", NS))
    assert "unknown" in texts and "collapsed" in texts
    assert any("unknown" in classes(g) for g in legend.iterfind(".//svg:g", NS))


@pytest.mark.django_db
def test_the_graph_page_jumps_and_collapses_on_a_300_revision_history(
    client, admin_user, pg_url, script_dir_factory, configure_target
):
    sd = script_dir_factory()
    revisions = generate_history(sd, 300, merges=5, seed=6)
    configure_target("big", pg_url, sd.ini)
    middle = revisions[120]
    stamp("big", middle)
    target = sync_target("big")
    client.force_login(admin_user)
    url = reverse("admin:opsapp_target_graph", args=[target.pk])

    def ids_and_anchors(html: str) -> tuple[set[str], list[str]]:
        svg = main_svg(html)
        ids = {g.get("id") for g in svg.iterfind(".//svg:g", NS) if g.get("id")}
        nav = html.split('class="ops-graph-nav"', 1)[1].split("</nav>", 1)[0]
        return ids, re.findall(r'href="#([^"]+)"', nav)

    full = client.get(url).content.decode()
    ids, anchors = ids_and_anchors(full)
    assert len(ids) == 300
    assert f"rev-{middle}" in anchors  # jump to the current revision
    heads = set(Revision.objects.filter(catalog_id=target.catalog_id, is_head=True).values_list("revision", flat=True))
    assert {f"rev-{h}" for h in heads} <= set(anchors)
    assert set(anchors) <= ids  # every jump link lands on an element of the SVG

    folded = client.get(url, {"collapse": "1"}).content.decode()
    ids_c, anchors_c = ids_and_anchors(folded)
    assert len(ids_c) < 150
    assert set(anchors_c) <= ids_c
    nodes, _, _ = parsed(main_svg(folded))
    rows = revisions_of(target)
    for r in rows:
        if r.is_head or r.is_branch_point or r.is_merge_point or r.is_base or r.is_current:
            assert r.revision in nodes and "run" not in classes(nodes[r.revision])
    assert "Show every revision" in folded

    # Jump by id prefix, server-side: a redirect to the node's anchor, which exists on the page it names.
    hidden = next(r.revision for r in rows if r.revision not in nodes)  # folded in a run
    response = client.get(url, {"rev": hidden[:8], "collapse": "1"})
    assert response.status_code == 302
    location = response["Location"]
    assert location.endswith(f"#rev-{hidden}")
    landed, _ = ids_and_anchors(client.get(location.split("#")[0]).content.decode())
    assert f"rev-{hidden}" in landed  # the run holding it is split open so the anchor exists

    # A bad id is a clear message on the page, not an error.
    response = client.get(url, {"rev": "zz-nope"})
    assert response.status_code == 200
    assert "No revision &#x27;zz-nope&#x27; here" in response.content.decode()
