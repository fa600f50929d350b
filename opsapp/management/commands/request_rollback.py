"""request_rollback --target NAME --to REV --reason TEXT --actor USERNAME [--snapshot ID] [--json]

Plans a downgrade, stores the request and emails a verification code to the
approvers. Exit 0: request pending with a code sent; 1: refused (unknown or
ambiguous revision, nothing to downgrade, no approver, ...); 2: bad usage.
"""

from __future__ import annotations

import contextlib
import sys

from django.core.management.base import CommandError

from opsapp.management.base import OpsCommand
from opsapp.management.commands._rollback_cli import emit, named_actor, result_json
from opsapp.services.errors import OpsError, TargetNotConfigured
from opsapp.services.rollback.requests import create_request


class Command(OpsCommand):
    help = (
        "Request a guarded downgrade of a target: plan it, store the SQL preview and destructive analysis, "
        "and email a verification code to the approvers. --json prints {id, status, gate, message, heads}."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--target", required=True, metavar="NAME", help="the target to downgrade")
        parser.add_argument(
            "--to",
            required=True,
            metavar="REV",
            help="revision to downgrade to: id, unique prefix, branch@rev, base, -N",
        )
        parser.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded in the audit log)")
        parser.add_argument("--actor", required=True, metavar="USERNAME", help="the console user making the request")
        parser.add_argument("--snapshot", type=int, metavar="ID", help="attach this verified snapshot")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")

    def handle(self, *args, **options) -> None:
        actor = named_actor(options["actor"], permission="opsapp.add_rollbackrequest", command="request_rollback")
        if not options["reason"].strip():
            raise CommandError("--reason must not be empty.", returncode=2)
        # With --json, stdout carries the JSON only: the console email backend
        # (development default) would otherwise print the approver's email there.
        quiet = contextlib.redirect_stdout(sys.stderr) if options["json"] else contextlib.nullcontext()
        try:
            with quiet:
                request = create_request(
                    target_name=options["target"],
                    to=options["to"],
                    reason=options["reason"],
                    actor=actor,
                    snapshot_id=options["snapshot"],
                )
        except TargetNotConfigured as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except OpsError as exc:
            emit(
                self,
                options,
                result_json(request_id=None, status="refused", gate=None, message=str(exc), heads=exc.heads),
                "",
            )
            raise CommandError(str(exc)) from exc
        if request.last_refusal_gate:
            message = request.last_refusal_message
            emit(
                self,
                options,
                result_json(
                    request_id=request.pk,
                    status=request.status,
                    gate="request",
                    message=message,
                    heads=request.from_heads,
                ),
                "",
            )
            raise CommandError(f"Request #{request.pk} created but cannot proceed: {message}")
        message = (
            f"Request #{request.pk}: downgrade {request.target.name} from {', '.join(request.from_heads)} "
            f"to {request.to_revision} (reverts {', '.join(request.steps)}); code sent to "
            f"{', '.join(request.code_recipients)}."
        )
        if request.snapshot_id is None:
            message += " Attach a verified snapshot before executing."
        if request.non_transactional:
            message += " Warning: the plan cannot run in one transaction and will be refused."
        emit(
            self,
            options,
            result_json(
                request_id=request.pk, status=request.status, gate=None, message=message, heads=request.from_heads
            ),
            message,
        )
