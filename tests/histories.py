"""Big generated histories for tests (the generator itself lives in opsapp.demo.history_gen, Django-free)."""

from __future__ import annotations

from opsapp.demo.history_gen import RevSpec, generate_history, plan_history

__all__ = ["RevSpec", "alembic_heads", "generate_history", "plan_history", "run_alembic"]


def run_alembic(target_name: str, verb: str, *args: object, **kwargs: object) -> None:
    """Run `alembic.command.<verb>` on a configured target through the console's shared connection, committed.

    This is how tests move a database "outside the console" (as a deploy would).
    """
    from alembic import command

    from opsapp.services.alembic_api import create_engine, make_config
    from opsapp.targets import get_target

    config = get_target(target_name)
    engine = create_engine(config)
    try:
        with engine.begin() as connection:
            getattr(command, verb)(make_config(config, connection=connection), *args, **kwargs)
    finally:
        engine.dispose()


def alembic_heads(ini: object) -> dict[str, object]:
    """What Alembic's own ScriptDirectory says about a script directory (heads, bases, walk order, flags)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    sd = ScriptDirectory.from_config(Config(str(ini)))
    walk = list(sd.walk_revisions())
    return {
        "heads": sorted(sd.get_heads()),
        "bases": sorted(sd.get_bases()),
        "walk": [s.revision for s in walk],
        "branch_points": sorted(s.revision for s in walk if s.is_branch_point),
        "merge_points": sorted(s.revision for s in walk if s.is_merge_point),
        "down": {s.revision: list(s._versioned_down_revisions) for s in walk},
        "labels": {s.revision: list(s._orig_branch_labels) for s in walk},
        "messages": {s.revision: s.doc for s in walk},
    }
