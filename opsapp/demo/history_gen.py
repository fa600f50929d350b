"""Generate big, realistic Alembic histories (tests and bench/ use it).

No Django imports: bench scripts import this module without settings. The
plan is pure (`plan_history`); `generate_history` writes it through any object
with the `add(rev, down, *, message, branch_labels, depends_on, create_date,
docstring)` method of `ScriptDir` below, which writes a real, throwaway Alembic
environment (env.py honouring the console's shared connection) to disk.

The shape is what real projects accumulate: a main line that repeatedly
forks into 2-4 parallel branches (some carrying `branch_labels`, given as a
string or a tuple) that are merged again (2-, 3- and 4-way merges); a second
base whose own chain is merged in at the first merge; `depends_on` across
sibling branches (string or tuple, sometimes a branch label); revisions
without a docstring or without a Create Date.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RevSpec:
    revision: str
    down: str | tuple[str, ...] | None
    message: str
    branch_labels: str | tuple[str, ...] | None = None
    depends_on: str | tuple[str, ...] | None = None
    create_date: str | None = "2026-01-01 00:00:00"
    docstring: bool = True


class RevisionWriter(Protocol):
    def add(self, rev: str, down: str | tuple[str, ...] | None, **kwargs: object) -> object: ...


def _ids(rng: random.Random):
    seen: set[str] = set()
    while True:
        rev = f"{rng.getrandbits(48):012x}"
        if rev not in seen and not rev[:4].isdigit():
            seen.add(rev)
            yield rev


def plan_history(n: int, merges: int = 0, seed: int = 0) -> list[RevSpec]:
    """Plan `n` revisions with exactly `merges` merge revisions (each 2-4 way).

    Raises ValueError when `n` is too small to hold that many merges
    (each merge needs at least three revisions: two branch tips and itself).
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    extra_base = 3 if merges and n >= 3 * merges + 10 else 0
    if n - 1 - extra_base < 3 * merges:
        raise ValueError(f"{n} revisions cannot hold {merges} merges (need at least {3 * merges + 1})")
    rng = random.Random(seed)
    ids = _ids(rng)
    specs: list[RevSpec] = []
    counter = 0

    def make(down, *, labels=None, depends=None) -> str:
        nonlocal counter
        counter += 1
        rev = next(ids)
        roll = rng.random()
        specs.append(
            RevSpec(
                revision=rev,
                down=down,
                message=f"step {counter}",
                branch_labels=labels,
                depends_on=depends,
                create_date=None if roll < 0.05 else f"2026-01-01 00:{counter // 60 % 60:02d}:{counter % 60:02d}",
                docstring=not (0.05 <= roll < 0.08),
            )
        )
        return rev

    head = make(None)
    aux_tip = None
    aux_chain: list[str] = []
    mainline = [head]
    if extra_base:
        aux_tip = make(None, labels="aux")
        aux_chain.append(aux_tip)
        for _ in range(extra_base - 1):
            aux_tip = make(aux_tip)
            aux_chain.append(aux_tip)

    budget = n - 1 - extra_base
    per_segment = budget // (merges + 1) if merges else budget
    for seg in range(merges):
        size = max(per_segment, 3)
        k = rng.choices((2, 3, 4), weights=(70, 20, 10))[0]
        k = max(2, min(k, size - 1))
        lengths = [1] * k
        for _ in range(size - 1 - k):
            lengths[rng.randrange(k)] += 1
        tips: list[str] = []
        chains: list[list[str]] = []
        for j, length in enumerate(lengths):
            start = aux_tip if (seg == 0 and j == k - 1 and aux_tip) else head
            labels = None
            label_roll = rng.random()
            if label_roll < 0.35:
                labels = f"s{seg}b{j}"
            elif label_roll < 0.45:
                labels = (f"s{seg}b{j}", f"s{seg}alt{j}")
            chain: list[str] = []
            tip = start
            for i in range(length):
                depends = None
                if i == length - 1 and rng.random() < 0.3:
                    # A dependency on a sibling branch that is merged later breaks
                    # Alembic's own upgrade (KeyError in HeadMaintainer), so real
                    # histories depend on older revisions: a main-line ancestor or
                    # the second base's chain.
                    pool = [r for r in (aux_chain if seg == 0 else mainline) if r != start]
                    if pool:
                        target = rng.choice(pool)
                        depends = target if rng.random() < 0.5 else (target,)
                tip = make(tip, labels=labels if i == 0 else None, depends=depends)
                chain.append(tip)
            chains.append(chain)
            tips.append(tip)
        head = make(tuple(tips))
        mainline.append(head)
        budget -= size
    while len(specs) < n:
        head = make(head)
    return specs


def generate_history(sd: RevisionWriter, n: int, merges: int = 0, seed: int = 0) -> list[str]:
    """Write `plan_history(n, merges, seed)` into `sd`; return the revision ids in creation order."""
    result = []
    for spec in plan_history(n, merges, seed):
        sd.add(
            spec.revision,
            spec.down,
            message=spec.message,
            branch_labels=spec.branch_labels,
            depends_on=spec.depends_on,
            create_date=spec.create_date,
            docstring=spec.docstring,
        )
        result.append(spec.revision)
    return result


# ------------------------------------------------------- script directories
ENV_PY = '''
"""Throwaway env.py: the console's shared-connection contract, like the demo target."""
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
target_metadata = None


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection):
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      transaction_per_migration=config.attributes.get("transaction_per_migration", False))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

SCRIPT_MAKO = '''"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""
from alembic import op
import sqlalchemy as sa

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
'''


class ScriptDir:
    """A real, throwaway Alembic environment on disk, built revision by revision."""

    def __init__(self, root: Path, url: str = "") -> None:
        self.root = root
        self.versions = root / "migrations" / "versions"
        self.versions.mkdir(parents=True)
        (root / "migrations" / "env.py").write_text(ENV_PY)
        (root / "migrations" / "script.py.mako").write_text(SCRIPT_MAKO)
        self.ini = root / "alembic.ini"
        self.ini.write_text(
            f"[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = {url.replace('%', '%%')}\n"
        )

    def add(
        self,
        rev: str,
        down: str | tuple[str, ...] | None,
        *,
        message: str | None = None,
        branch_labels: str | tuple[str, ...] | None = None,
        depends_on: str | tuple[str, ...] | None = None,
        upgrade: str = "pass",
        downgrade: str = "pass",
        create_date: str | None = "2026-01-01 00:00:00",
        docstring: bool = True,
    ) -> Path:
        """Write one revision file. `upgrade`/`downgrade` are Python bodies (op.* calls)."""
        header = ""
        if docstring:
            header = f'"""{message or "revision " + rev}\n\nRevision ID: {rev}\nRevises: {down}\n'
            if create_date:
                header += f"Create Date: {create_date}\n"
            header += '\n"""\n'
        body = textwrap.dedent(
            f"""
            from alembic import op
            import sqlalchemy as sa

            revision = {rev!r}
            down_revision = {down!r}
            branch_labels = {branch_labels!r}
            depends_on = {depends_on!r}


            def upgrade():
            {textwrap.indent(textwrap.dedent(upgrade).strip() or "pass", "    ")}


            def downgrade():
            {textwrap.indent(textwrap.dedent(downgrade).strip() or "pass", "    ")}
            """
        )
        path = self.versions / f"{rev}_{(message or 'rev').replace(' ', '_')[:30]}.py"
        path.write_text(header + body)
        return path
