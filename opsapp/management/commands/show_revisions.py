"""show_revisions [--target NAME] [--json] [--no-sync]: the catalog of each target.

Syncs first (incremental: an unchanged script directory is not re-read) so
the output is current, unless --no-sync. With --json and --target, one
object {"target", "state", "current", "heads", "revisions": [...]}; without
--target, a list of such objects. Revisions are listed newest first.
"""

from __future__ import annotations

import json

from opsapp.management.base import OpsCommand
from opsapp.management.commands._catalog_cli import command_actor, target_json, target_names
from opsapp.models import TargetState
from opsapp.services.catalog.sync import ensure_target_row, sync_target

# States whose detail (the broken file and its error, the driver's masked
# error, the unknown revision) must be shown, not just named.
EXPLAINED_STATES = (
    TargetState.SCRIPT_ERROR,
    TargetState.UNREACHABLE,
    TargetState.UNKNOWN_REVISION,
    TargetState.OVERLAPPING_VERSIONS,
)


def _marks(rev: dict) -> str:
    marks = [
        name
        for name, flag in (
            ("head", rev["is_head"]),
            ("base", rev["is_base"]),
            ("branchpoint", rev["is_branch_point"]),
            ("mergepoint", rev["is_merge_point"]),
            ("current", rev["is_current"]),
        )
        if flag
    ]
    return "".join(f" ({m})" for m in marks)


class Command(OpsCommand):
    help = "Show each target's revisions with head/base/branch/merge/applied/current flags."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--target", metavar="NAME", help="only this target (default: all configured targets)")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")
        parser.add_argument("--no-sync", action="store_true", help="show the stored catalog without syncing first")

    def handle(self, *args, **options) -> None:
        actor = command_actor()
        objects = []
        for name in target_names(options["target"]):
            target = ensure_target_row(name) if options["no_sync"] else sync_target(name, actor=actor)
            data = target_json(target)
            objects.append(data)
            if options["json"]:
                # stdout carries only the documented JSON; the explanation goes to stderr.
                if target.state in EXPLAINED_STATES:
                    self.stderr.write(f"{target.name}: {target.state_detail}")
                continue
            if options["verbosity"] < 1:
                continue
            self.stdout.write(
                f"{target.name}: {target.get_state_display()}; database at {', '.join(data['current']) or '(empty)'}; "
                f"heads {', '.join(data['heads']) or '(none)'}"
            )
            if target.state in EXPLAINED_STATES:
                self.stdout.write(f"  {target.state_detail}")
            for rev in data["revisions"]:
                parents = ", ".join(rev["down_revisions"]) or "<base>"
                labels = f" ({', '.join(rev['branch_labels'])})" if rev["branch_labels"] else ""
                applied = "applied" if rev["applied"] else "pending"
                self.stdout.write(
                    f"  {parents} -> {rev['revision']}{labels}{_marks(rev)} [{applied}], {rev['message']}"
                )
        if options["json"]:
            self.stdout.write(json.dumps(objects[0] if options["target"] else objects))
