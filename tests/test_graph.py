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
    rows = {r.revision: r for r in Revision.objects.filter(target=target)}
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
        assert link.get("href") == reverse("admin:opsapp_revision_change", args=[rows[rev].pk])
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
    rows = list(Revision.objects.filter(target=target))
    assert set(nodes) == {r.revision for r in rows}
    assert pairs == {(p, r.revision) for r in rows for p in r.down_revisions}
    assert sum(1 for g in nodes.values() if "merge-point" in classes(g)) == 30
    assert {rev for rev, g in nodes.items() if "current" in classes(g)} == {revisions[150]}
    assert_no_label_overlaps(svg)
