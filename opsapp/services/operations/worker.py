"""What a worker does with an operation id: claim it, keep its heartbeat, run it, record the end.

The worker first takes the operation's liveness lock (liveness.py), then
claims the row with a conditional UPDATE from `queued` to `running`: a
cancelled or already-claimed operation is skipped, so nothing runs twice,
and reconcile can never see a running operation whose worker holds no lock.
A background thread writes the heartbeat and the progress every
OPS_HEARTBEAT_SECONDS and looks for a cancel request.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from opsapp.models import Operation, OperationKind, OperationState
from opsapp.services.actors import Actor
from opsapp.services.errors import OpsError
from opsapp.services.operations import liveness
from opsapp.targets import mask_url

log = logging.getLogger(__name__)


class OperationCancelled(OpsError):
    """The operation was cancelled while it ran; what it did is undone."""


class Heartbeat(threading.Thread):
    """Writes heartbeat + progress of one running operation; turns a cancel request into `cancelled`."""

    def __init__(self, operation_id: int, interval: float) -> None:
        super().__init__(name=f"heartbeat-{operation_id}", daemon=True)
        self.operation_id = operation_id
        self.interval = interval
        self.cancelled = threading.Event()
        self._halt = threading.Event()
        self._mutex = threading.Lock()
        self._fields: dict[str, Any] = {}
        self._aborter: Callable[[], None] | None = None
        self.cancelled_by = ""

    # -- called from the operation's thread
    def report(self, **fields: Any) -> None:
        """Progress fields to write at the next beat (progress_done, progress_total, progress_label)."""
        with self._mutex:
            self._fields.update(fields)

    def set_aborter(self, aborter: Callable[[], None] | None) -> None:
        with self._mutex:
            self._aborter = aborter

    def check(self) -> None:
        """Raise OperationCancelled when a cancel was asked for."""
        if self.cancelled.is_set():
            raise OperationCancelled(f"Cancelled by {self.cancelled_by or 'an operator'} while it ran.")

    def check_now(self) -> None:
        """At a safe point: read the row for a cancel request (not waiting for the next beat), then check()."""
        self._read_cancel_request()
        self.check()

    def _read_cancel_request(self) -> None:
        """Mark this job cancelled when its row says someone asked (once; later reads are skipped)."""
        if self.cancelled.is_set():
            return
        asked = (
            Operation.objects.filter(pk=self.operation_id, cancel_requested_at__isnull=False)
            .values_list("cancel_requested_by", flat=True)
            .first()
        )
        if asked is not None:
            self.cancelled_by = asked
            self.cancelled.set()

    def stop(self) -> dict[str, Any]:
        """End the thread; return the progress fields last reported (the caller writes them with the end)."""
        self._halt.set()
        self.join(timeout=self.interval * 5 + 5)
        with self._mutex:
            return dict(self._fields)

    # -- the thread
    def run(self) -> None:
        try:
            while not self._halt.wait(self.interval):
                self.beat()
        finally:
            connection.close()

    def beat(self) -> None:
        with self._mutex:
            fields, aborter = dict(self._fields), self._aborter
        try:
            Operation.objects.filter(pk=self.operation_id, state=OperationState.RUNNING).update(
                heartbeat_at=timezone.now(), **fields
            )
            self._read_cancel_request()
        except DatabaseError:  # a busy SQLite file or a dropped connection: the next beat tries again
            log.warning("heartbeat of operation %s not written", self.operation_id, exc_info=True)
        if self.cancelled.is_set() and aborter is not None:
            try:
                aborter()
            except Exception:  # noqa: BLE001 - an abort that fails is retried at the next beat
                log.warning("abort of operation %s failed", self.operation_id, exc_info=True)


def actor_of(op: Operation) -> Actor:
    """Who the work is done for: the user who asked (audit events name them, not the worker)."""
    return Actor(
        username=op.requested_by_username or "unknown",
        user_id=op.requested_by_id,
        client_ip=op.client_ip,
        user=op.requested_by,
    )


def run(operation_id: int) -> str:
    """Run one operation to its end in this process; return its final state. Never raises for its failure."""
    from opsapp.services.operations import runners

    with liveness.hold(operation_id):
        now = timezone.now()
        claimed = Operation.objects.filter(pk=operation_id, state=OperationState.QUEUED).update(
            state=OperationState.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker_host=socket.gethostname()[:255],
            worker_pid=os.getpid(),
        )
        # Request and snapshot load when a runner reads them: most jobs are syncs, which have
        # neither, and joining them (a request carries its plan and SQL) cost every job.
        op = Operation.objects.select_related("target", "requested_by").filter(pk=operation_id).first()
        if op is None:
            return "missing"
        if not claimed:
            return op.state  # cancelled while queued, or already taken: never run twice
        beat = Heartbeat(op.pk, settings.OPS_HEARTBEAT_SECONDS)
        beat.start()
        state, result, error, progress = OperationState.FAILED, None, "", {}
        try:
            runner = runners.RUNNERS[OperationKind(op.kind)]
            result = runner(op, actor_of(op), beat)
            state = OperationState.SUCCEEDED
        except OpsError as exc:
            error = str(exc)
            result = getattr(exc, "result", None)  # what a failed run still found (a failed rehearsal's record)
            state = OperationState.CANCELLED if beat.cancelled.is_set() else OperationState.FAILED
        except Exception as exc:  # noqa: BLE001 - recorded on the row; the worker goes on with the next job
            log.exception("operation %s failed unexpectedly", op.pk)
            error = mask_url(f"{type(exc).__name__}: {exc}")
        finally:
            progress = beat.stop()
        _finish(op, state, result, error, progress)
        return state


def _finish(op: Operation, state: str, result: Any, error: str, progress: dict[str, Any]) -> None:
    """Record the end and the last progress reported, in one statement (a job's last write)."""
    now = timezone.now()
    Operation.objects.filter(pk=op.pk, state=OperationState.RUNNING).update(
        state=state, finished_at=now, heartbeat_at=now, result=result, error=error[:10000], **progress
    )
