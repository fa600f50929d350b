"""The linear catalog's graph facts equal Alembic's RevisionMap on every history the tests build."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RangeNotAncestorError, Revision, RevisionMap
from alembic.util import to_tuple

from opsapp.demo.history_gen import ScriptDir, generate_history, plan_history
from opsapp.services.catalog.load import LoadedCatalog, alembic_facts
from opsapp.services.catalog.topology import applied_set, build_graph, compute_facts, downgrade_steps

REPO = Path(__file__).resolve().parent.parent


def assert_same_facts(make_revisions) -> None:
    """compute_facts and Alembic's map agree; each gets its own objects (RevisionMap mutates them)."""
    ours = compute_facts(make_revisions())
    theirs = alembic_facts(make_revisions(), LoadedCatalog())
    assert ours is not None and theirs is not None
    assert ours.walk == theirs.walk
    assert ours.heads == theirs.heads
    assert ours.bases == theirs.bases
    assert ours.is_head == theirs.is_head
    assert ours.is_base == theirs.is_base
    assert ours.is_branch_point == theirs.is_branch_point
    assert ours.is_merge_point == theirs.is_merge_point


def revisions_from_plan(n: int, merges: int, seed: int):
    plan = plan_history(n, merges, seed)
    return lambda: [
        Revision(s.revision, s.down, dependencies=s.depends_on, branch_labels=s.branch_labels) for s in plan
    ]


def scripts_of(ini: Path) -> list[Script]:
    sd = ScriptDirectory.from_config(Config(str(ini)))
    return list(sd._load_revisions())


def test_the_demo_script_directory_agrees_with_alembic():
    assert_same_facts(lambda: scripts_of(REPO / "alembic.ini"))


def test_a_generated_thousand_revision_history_on_disk_agrees_with_alembic(tmp_path):
    sd = ScriptDir(tmp_path)
    generate_history(sd, 1000, merges=30, seed=7)
    assert_same_facts(lambda: scripts_of(sd.ini))


@pytest.mark.parametrize(
    ("n", "merges", "seed"),
    [(7, 2, 0), (40, 0, 1), (300, 30, 2), (1000, 30, 7), (2000, 200, 3), (3000, 5, 4), (500, 150, 5)],
)
def test_generated_histories_agree_with_alembic(n, merges, seed):
    assert_same_facts(revisions_from_plan(n, merges, seed))


def random_dag(n: int, seed: int):
    """Arbitrary shapes the generator never makes: many roots, wide merges, shared and label dependencies."""
    rng = random.Random(seed)
    specs = []
    labels: list[str] = []
    for i in range(n):
        rev = f"r{i:04d}"
        earlier = [s[0] for s in specs]
        roll = rng.random()
        if not earlier or roll < 0.05:
            down = None
        elif roll < 0.25:
            down = tuple(rng.sample(earlier, min(len(earlier), rng.choice((2, 3, 4)))))
        else:
            down = rng.choice(earlier[-8:])
        label = None
        if rng.random() < 0.08:
            label = f"lab{i}"
            labels.append(label)
        deps = None
        if earlier and rng.random() < 0.3:
            pool = earlier[:-1] or earlier
            picked = rng.sample(pool, min(len(pool), rng.choice((1, 2, 3))))
            if labels and rng.random() < 0.3:
                owner = {s[2]: s[0] for s in specs if s[2]}
                known = [lab for lab in labels if lab in owner]
                if known:
                    picked.append(rng.choice(known))
            deps = tuple(picked) if len(picked) > 1 else picked[0]
        specs.append((rev, down, label, deps))
    order = list(specs)
    rng.shuffle(order)  # load order is directory order, unrelated to history order
    return lambda: [Revision(rev, down, dependencies=deps, branch_labels=label) for rev, down, label, deps in order]


@pytest.mark.parametrize("seed", range(40))
def test_random_shapes_agree_with_alembic(seed):
    assert_same_facts(random_dag(60 + seed * 5, seed))


def test_an_irregular_graph_is_left_to_alembic():
    assert compute_facts([Revision("a", None), Revision("b", "missing")]) is None
    assert compute_facts([Revision("a", None), Revision("a", None)]) is None
    assert compute_facts([Revision("a", "b"), Revision("b", "a")]) is None
    assert compute_facts([Revision("a", None, branch_labels="x"), Revision("b", "a", branch_labels="x")]) is None
    assert compute_facts([Revision("a", None), Revision("b", "a", dependencies="nolabel")]) is None


def alembic_downgrade(rmap: RevisionMap, heads: list[str], to: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [r.revision for r in rmap.iterate_revisions(tuple(heads), to, select_for_downgrade=True)]


def downgrade_cases(make_revisions, seed: int, count: int = 25):
    """(graph, Alembic's map, heads, to) for the real heads and for databases stopped part-way."""
    revisions = make_revisions()
    rmap = RevisionMap(lambda: revisions)
    graph = build_graph(
        [
            (r.revision, r._versioned_down_revisions, to_tuple(r.dependencies, default=()), r._orig_branch_labels)
            for r in revisions
        ]
    )
    assert graph is not None
    rng = random.Random(seed)
    order = graph.order
    head_sets = [sorted(rmap.heads)] + [[rng.choice(order)] for _ in range(4)]
    for heads in head_sets:
        applied = sorted(applied_set(graph, heads))
        for to in rng.sample(applied, min(count, len(applied))):
            yield graph, rmap, heads, to


@pytest.mark.parametrize(
    ("make", "seed"),
    [(revisions_from_plan(1000, 30, 7), 1), (revisions_from_plan(400, 60, 2), 2)]
    + [(random_dag(80 + seed * 7, seed), seed) for seed in range(12)],
)
def test_downgrade_steps_equal_alembics_downgrade(make, seed):
    answered = 0
    for graph, rmap, heads, to in downgrade_cases(make, seed):
        ours = downgrade_steps(graph, heads, to)
        try:
            theirs = alembic_downgrade(rmap, heads, to)
        except RangeNotAncestorError:
            assert ours is None, (heads, to)  # the caller lets Alembic word the refusal
            continue
        assert ours == theirs, (heads, to)
        answered += 1
    assert answered
