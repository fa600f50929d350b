"""execute_rollback ID --code CODE|- --actor USERNAME [--json]  |  execute_rollback --reconcile [--json]

Checks the downgrade gate and runs the downgrade of request ID in one
transaction. A failed downgrade names the revision whose step failed, the
statement and the SQLSTATE (in --json: failed_revision, failed_statement,
sqlstate). Exit 0: succeeded; 1: refused at a gate or failed (rolled
back); 2: bad usage (unknown request or user, missing options).

--reconcile marks `running` requests whose executor died as `interrupted`
(with the heads found) and exits 0.
"""

from __future__ import annotations

from django.core.management.base import CommandError

from opsapp.management.commands._rollback_cli import emit, named_actor, result_json
from opsapp.management.cron import CronRecorded
from opsapp.models import RollbackRequest
from opsapp.services.actors import Actor
from opsapp.services.errors import GateRefused, OpsError, RollbackFailed, TargetNotConfigured
from opsapp.services.rollback.reconcile import reconcile


def _read_code() -> str:
    """The code from standard input: a hidden prompt on a terminal, else the first line."""
    import getpass
    import sys

    code = getpass.getpass("Verification code: ") if sys.stdin.isatty() else sys.stdin.readline()
    code = code.strip()
    if not code:
        raise CommandError("No verification code on standard input.", returncode=2)
    return code


class Command(CronRecorded):
    help = (
        "Execute a rollback request with its verification code (the gate is checked first), or --reconcile "
        "requests left running by a process that died. --json prints {id, status, gate, message, heads}; a failed downgrade adds failed_revision, failed_statement "
        "and sqlstate."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("request_id", nargs="?", type=int, metavar="ID", help="the rollback request to execute")
        parser.add_argument(
            "--code",
            metavar="CODE",
            help="the verification code the approver received; '-' reads it from standard input (prompting without "
            "echo on a terminal), which keeps it out of the process list and shell history",
        )
        parser.add_argument("--actor", metavar="USERNAME", help="the console user executing")
        parser.add_argument("--reconcile", action="store_true", help="mark dead running requests as interrupted")
        parser.add_argument("--json", action="store_true", help="print machine-readable output on stdout")
        parser.add_argument(
            "--enqueue",
            action="store_true",
            help="check the gate and the code here, then queue the downgrade for a worker (which checks the "
            "gate again under the lock) and print the operation id; the code never enters the queue",
        )

    def cron_job_for(self, options) -> str:
        # Only the cron half: executing one request is an operator's act, not a scheduled job.
        return "reconcile" if options.get("reconcile") else ""

    def handle(self, *args, **options) -> None:
        if options["reconcile"]:
            if options["request_id"] is not None or options["code"]:
                raise CommandError("--reconcile takes no request ID and no --code.", returncode=2)
            return self._reconcile(options)
        request_id = options["request_id"]
        if request_id is None:
            raise CommandError("Give a request ID (or --reconcile).", returncode=2)
        if not options["code"]:
            raise CommandError("--code CODE (or --code - to read it from standard input) is required.", returncode=2)
        if options["code"] == "-":
            options["code"] = _read_code()
        actor = named_actor(options["actor"], permission="opsapp.execute_rollbackrequest", command="execute_rollback")
        if not RollbackRequest.objects.filter(pk=request_id).exists():
            raise CommandError(f"Rollback request #{request_id} does not exist.", returncode=2)
        try:
            if options["enqueue"]:
                from opsapp.services.operations.downgrade import enqueue_downgrade

                op = enqueue_downgrade(request_id, code=options["code"], actor=actor)
                emit(
                    self,
                    options,
                    {"id": request_id, "status": "queued", "operation": op.pk, "gate": None},
                    f"Code accepted; the downgrade of request #{request_id} is queued as operation #{op.pk}. "
                    f"Follow it with `manage.py show_operation {op.pk} --wait`.",
                )
                return
            # Imported here: the downgrade needs Alembic and SQLAlchemy, the cron --reconcile does not.
            from opsapp.services.rollback.requests import execute_request

            result = execute_request(request_id, code=options["code"], actor=actor)
        except GateRefused as exc:
            emit(
                self,
                options,
                result_json(request_id=request_id, status="refused", gate=exc.gate, message=str(exc), heads=exc.heads),
                "",
            )
            raise CommandError(f"Refused at gate '{exc.gate}': {exc}") from exc
        except RollbackFailed as exc:
            emit(
                self,
                options,
                result_json(
                    request_id=request_id,
                    status="failed",
                    gate=None,
                    message=str(exc),
                    heads=exc.heads,
                    failed_revision=exc.revision or "",
                    failed_statement=getattr(exc, "statement", ""),
                    sqlstate=getattr(exc, "sqlstate", ""),
                ),
                "",
            )
            raise CommandError(str(exc)) from exc
        except TargetNotConfigured as exc:
            raise CommandError(str(exc), returncode=2) from exc
        except OpsError as exc:
            emit(
                self,
                options,
                result_json(request_id=request_id, status="error", gate=None, message=str(exc), heads=exc.heads),
                "",
            )
            raise CommandError(str(exc)) from exc
        emit(
            self,
            options,
            result_json(
                request_id=result.request_id,
                status=result.status,
                gate=None,
                message=result.message,
                heads=result.heads,
            ),
            result.message,
        )

    def _reconcile(self, options) -> None:
        actor = (
            named_actor(options["actor"], permission="opsapp.execute_rollbackrequest", command="execute_rollback")
            if options["actor"]
            else Actor.cron()
        )
        done = reconcile(actor=actor)
        payload = [
            result_json(request_id=r.pk, status=r.status, gate=None, message=r.error, heads=r.final_heads) for r in done
        ]
        human = "\n".join(f"Request #{r.pk}: {r.error}" for r in done) or "No interrupted request found."
        emit(self, options, payload, human)
