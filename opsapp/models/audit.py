from __future__ import annotations

from datetime import UTC, datetime

from django.db import connection, models
from django.db.models import Max, Min
from django.utils import timezone


class AuditAction(models.TextChoices):
    ROLLBACK_REQUESTED = "rollback_requested", "rollback requested"
    CODE_ISSUED = "code_issued", "code issued"
    CODE_REJECTED = "code_rejected", "code rejected"
    REQUEST_LOCKED = "request_locked", "request locked out"
    REQUEST_CANCELLED = "request_cancelled", "request cancelled"
    SNAPSHOT_TAKEN = "snapshot_taken", "snapshot taken"
    SNAPSHOT_VERIFIED = "snapshot_verified", "snapshot verified"
    SNAPSHOT_FAILED = "snapshot_failed", "snapshot failed"
    SNAPSHOT_PRUNED = "snapshot_pruned", "snapshot pruned"
    SNAPSHOT_RESTORED = "snapshot_restored", "snapshot restored"
    SNAPSHOT_ATTACHED = "snapshot_attached", "snapshot attached"
    ROLLBACK_REFUSED = "rollback_refused", "rollback refused"
    ROLLBACK_STARTED = "rollback_started", "rollback started"
    ROLLBACK_RETRIED = "rollback_retried", "rollback retried"
    ROLLBACK_SUCCEEDED = "rollback_succeeded", "rollback succeeded"
    ROLLBACK_FAILED = "rollback_failed", "rollback failed"
    ROLLBACK_INTERRUPTED = "rollback_interrupted", "rollback interrupted"
    STAMP = "stamp", "stamp"
    HEADS_CHANGED = "heads_changed", "heads changed"
    AUDIT_VERIFIED = "audit_verified", "audit log verified"
    AUDIT_EXPORTED = "audit_exported", "audit log exported"
    AUDIT_KEY_CHANGED = "audit_key_changed", "audit key changed"
    EVIDENCE_EXPORTED = "evidence_exported", "evidence exported"
    OTP_ENROLLED = "otp_enrolled", "2FA device enrolled"
    OTP_RESET = "otp_reset", "2FA devices reset"
    OTP_TOKEN_REJECTED = "otp_token_rejected", "2FA token rejected"
    OTP_BACKUP_CODE_USED = "otp_backup_code_used", "2FA backup code used"
    OTP_REKEYED = "otp_rekeyed", "2FA secrets re-encrypted"
    REHEARSAL_STARTED = "rehearsal_started", "rehearsal started"
    REHEARSAL_SUCCEEDED = "rehearsal_succeeded", "rehearsal succeeded"
    REHEARSAL_FAILED = "rehearsal_failed", "rehearsal failed"
    REHEARSAL_INTERRUPTED = "rehearsal_interrupted", "rehearsal interrupted"
    PASSWORD_RESET = "password_reset", "password reset"
    CODE_ACCEPTED = "code_accepted", "code accepted, downgrade queued"
    OPERATION_CANCELLED = "operation_cancelled", "operation cancelled"
    OPERATION_INTERRUPTED = "operation_interrupted", "operation interrupted"
    RESTORE_QUEUED = "restore_queued", "restore queued"


class AuditOutcome(models.TextChoices):
    SUCCESS = "success", "success"
    FAILURE = "failure", "failure"
    REFUSED = "refused", "refused"
    INFO = "info", "info"


FEW_EVENTS = 1000


def _period_of(moment: datetime, kind: str, tz) -> datetime:
    return datetime(moment.year, 1 if kind == "year" else moment.month, 1 if kind != "day" else moment.day, tzinfo=tz)


class AuditEventQuerySet(models.QuerySet):
    """Cheap `datetimes()` for the admin's date hierarchy on a table of millions of rows.

    Django's own implementation is `SELECT DISTINCT DATE_TRUNC(...)` over every
    matching row (a full scan per page view). Here the bounds come from MIN/MAX
    and each candidate year/month/day is one `EXISTS` probe on the created_at
    index, so the cost follows the number of periods, not of events; on
    PostgreSQL bounds and probes are one statement (one round trip).

    `count_hint` is the number of rows the admin's paginator counted or
    estimated for this very queryset (the changelist hands the same object to
    the paginator and then to the date hierarchy). It only chooses the
    strategy: a list known to be big skips reading the times of its first
    FEW_EVENTS + 1 events.
    """

    count_hint: int | None = None

    def datetimes(self, field_name, kind, order="ASC", tzinfo=None, **kwargs):
        if field_name != "created_at" or kind not in ("year", "month", "day") or kwargs:
            return super().datetimes(field_name, kind, order, tzinfo, **kwargs)
        tz = tzinfo or timezone.get_current_timezone()
        if self.query.where and (self.count_hint is None or self.count_hint <= FEW_EVENTS):
            # A filtered list (a search above all) often matches few events, and each probe below would run
            # the filter again: read their times once, and probe only when there are many.
            moments = list(self.order_by().values_list("created_at", flat=True)[: FEW_EVENTS + 1])
            if len(moments) <= FEW_EVENTS:
                periods = sorted({_period_of(timezone.localtime(moment, tz), kind, tz) for moment in moments})
                return periods if order == "ASC" else periods[::-1]
        if connection.vendor == "postgresql" and _zone_name(tz):
            periods = self._probe_in_one_statement(kind, tz)
        else:
            periods = self._probe_each_period(kind, tz)
        return periods if order == "ASC" else periods[::-1]

    def _probe_each_period(self, kind: str, tz) -> list[datetime]:
        bounds = self.aggregate(first=Min("created_at"), last=Max("created_at"))
        if bounds["first"] is None:
            return []
        first, last = timezone.localtime(bounds["first"], tz), timezone.localtime(bounds["last"], tz)
        start = _period_of(first, kind, tz)
        periods = []
        while start <= last:
            end = _next_period(start, kind)
            if self.filter(created_at__gte=start, created_at__lt=end).exists():
                periods.append(start)
            start = end
        return periods

    def _probe_in_one_statement(self, kind: str, tz) -> list[datetime]:
        """_probe_each_period as one query: MIN/MAX and each period's EXISTS run on the created_at index."""
        sql, params = self.order_by().values("created_at").query.sql_with_params()
        zone, step = _zone_name(tz), f"1 {kind}"
        statement = f"""
            WITH e AS NOT MATERIALIZED ({sql}),
            b AS (SELECT date_trunc(%s, MIN(created_at) AT TIME ZONE %s) AS lo, MAX(created_at) AT TIME ZONE %s AS hi
                  FROM e)
            SELECT p FROM b, generate_series(b.lo, b.hi, %s::interval) AS p
            WHERE EXISTS (
                SELECT 1 FROM e
                WHERE e.created_at >= p AT TIME ZONE %s AND e.created_at < (p + %s::interval) AT TIME ZONE %s
            )
            ORDER BY p
        """
        with connection.cursor() as cursor:
            cursor.execute(statement, [*params, kind, zone, zone, step, zone, step, zone])
            return [datetime(p.year, p.month, p.day, tzinfo=tz) for (p,) in cursor.fetchall()]


def _zone_name(tz) -> str | None:
    """The IANA name PostgreSQL's AT TIME ZONE takes for `tz`; None for a fixed offset (its sign would flip)."""
    return getattr(tz, "key", None) or ("UTC" if tz is UTC else None)


def _next_period(start: datetime, kind: str) -> datetime:
    if kind == "year":
        return start.replace(year=start.year + 1)
    if kind == "month":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    day = datetime.fromordinal(start.toordinal() + 1)
    return start.replace(year=day.year, month=day.month, day=day.day)


class AuditEvent(models.Model):
    """Append-only, hash-chained record. Only opsapp.services.audit.log.append_event writes it.

    Request, snapshot and user are plain ids, not foreign keys: a cascade or
    SET NULL would be an UPDATE/DELETE, which the triggers refuse, and the
    record must outlive what it describes.
    """

    seq = models.BigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False, db_index=True)
    actor_user_id = models.BigIntegerField(null=True, blank=True, editable=False)
    actor = models.CharField(max_length=150, editable=False, db_index=True)
    action = models.CharField(max_length=40, choices=AuditAction.choices, editable=False)
    outcome = models.CharField(max_length=20, choices=AuditOutcome.choices, editable=False)
    target_name = models.CharField("target", max_length=100, blank=True, editable=False)
    request_id = models.BigIntegerField(null=True, blank=True, editable=False)
    snapshot_id = models.BigIntegerField(null=True, blank=True, editable=False)
    from_revision = models.CharField(max_length=500, blank=True, editable=False)
    to_revision = models.CharField(max_length=500, blank=True, editable=False)
    message = models.TextField(blank=True, editable=False)
    detail = models.JSONField(default=dict, blank=True, editable=False)
    client_ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    user_agent = models.CharField(max_length=500, blank=True, editable=False)
    prev_hash = models.CharField(max_length=64, editable=False)
    hash = models.CharField(max_length=64, editable=False)
    # Which audit key MACed the event ('' for events written before the console had one), and the MAC:
    # HMAC-SHA256(key, hash). See opsapp.services.audit.chain.
    key_id = models.CharField(max_length=40, blank=True, default="", editable=False)
    mac = models.CharField(max_length=64, blank=True, default="", editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        permissions = [("export_auditevent", "Can export the audit log")]
        indexes = [
            # filtered changelists, newest first: by action, outcome, target
            models.Index(fields=["action", "-seq"], name="audit_action_seq"),
            models.Index(fields=["outcome", "-seq"], name="audit_outcome_seq"),
            models.Index(fields=["target_name", "-seq"], name="audit_target_seq"),
            models.Index(fields=["request_id"], name="audit_request"),
        ]

    def __str__(self) -> str:
        return f"Event #{self.seq}: {self.get_action_display()} ({self.get_outcome_display()})"
