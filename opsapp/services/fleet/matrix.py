"""The fleet matrix: every target against its state, snapshot age and open requests.

One query for the whole fleet (latest verified snapshot and open request
count are correlated subqueries, index probes per target), so the admin index, `check_drift --all --json` and
/metrics read the same rows at 500 targets as at 5. Reads the console's own
tables only: cron keeps them fresh.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from opsapp.models import RollbackRequest, Snapshot, SnapshotStatus, Target, TargetState
from opsapp.models.rollback import OPEN_STATUSES
from opsapp.targets import configured_names
from opsapp.targets_file import TAG_RE

# The matrix's columns, in display order, with their labels.
AT_HEAD = "at_head"
BEHIND = "behind"
UNKNOWN = "unknown"
MULTIPLE_HEADS = "multiple_heads"
UNREACHABLE = "unreachable"
MATRIX_STATES = {
    AT_HEAD: "at head",
    BEHIND: "behind",
    UNKNOWN: "unknown",
    MULTIPLE_HEADS: "multiple heads",
    UNREACHABLE: "unreachable",
}
# A target's stored state -> its matrix column. "unknown": where the database stands is not
# known against its scripts (a revision no script defines, unreadable scripts, never synced).
_COLUMN = {
    TargetState.AT_HEAD: AT_HEAD,
    TargetState.BEHIND: BEHIND,
    TargetState.EMPTY: BEHIND,
    TargetState.UNKNOWN_REVISION: UNKNOWN,
    TargetState.SCRIPT_ERROR: UNKNOWN,
    TargetState.NOT_SYNCED: UNKNOWN,
    TargetState.MULTIPLE_HEADS: MULTIPLE_HEADS,
    TargetState.UNREACHABLE: UNREACHABLE,
}


def matrix_state(state: str) -> str:
    return _COLUMN.get(state, UNKNOWN)


@dataclass
class FleetRow:
    name: str
    pk: int | None
    matrix_state: str
    state: str
    state_label: str
    state_detail: str
    behind: int  # revisions pending (0 unless matrix_state is "behind")
    heads: list[str]
    tags: dict[str, str]
    snapshot_id: int | None
    snapshot_at: datetime | None
    snapshot_age_seconds: float | None
    open_requests: int
    last_synced_at: datetime | None

    @property
    def matrix_label(self) -> str:
        label = MATRIX_STATES[self.matrix_state]
        return f"behind {self.behind}" if self.matrix_state == BEHIND else label

    def as_dict(self) -> dict:
        data = asdict(self)
        for key in ("snapshot_at", "last_synced_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data["matrix_label"] = self.matrix_label
        return data


@dataclass
class FleetMatrix:
    rows: list[FleetRow]
    # Per matrix state, over the rows the tag filter keeps (the state filter's own choices).
    counts: dict[str, int] = field(default_factory=dict)
    # Every tag key -> its values, over the whole fleet (the tag filter's choices).
    tags: dict[str, list[str]] = field(default_factory=dict)
    total: int = 0


def _unsynced_row(name: str) -> FleetRow:
    """A configured target the console has no row for yet."""
    return FleetRow(
        name=name,
        pk=None,
        matrix_state=UNKNOWN,
        state=TargetState.NOT_SYNCED,
        state_label=TargetState.NOT_SYNCED.label,
        state_detail="",
        behind=0,
        heads=[],
        tags={},
        snapshot_id=None,
        snapshot_at=None,
        snapshot_age_seconds=None,
        open_requests=0,
        last_synced_at=None,
    )


def parse_tag(text: str) -> tuple[str, str] | None:
    """'region=eu' -> ('region', 'eu'); None when it is not a valid tag filter."""
    key, sep, value = (text or "").partition("=")
    if not sep or not TAG_RE.match(key.strip()) or not value.strip():
        return None
    return key.strip(), value.strip()


def fleet_matrix(
    *, names: list[str] | None = None, tag: tuple[str, str] | None = None, state: str | None = None
) -> FleetMatrix:
    """The matrix of the configured targets (and stored ones no longer configured), sorted by name.

    `names` limits it to those targets; `tag` ("region", "eu") and `state`
    (a MATRIX_STATES key) filter it. Unknown filter values give no row.
    """
    # One query whatever the size of the fleet, with no join and no GROUP BY over the targets'
    # columns: per target, index probes for its latest verified snapshot (snapshot_target_status)
    # and its open requests (rollback_target_status). One round trip matters on a busy machine.
    latest_verified = Snapshot.objects.filter(target=OuterRef("pk"), status=SnapshotStatus.VERIFIED).order_by(
        "-started_at", "-id"
    )
    open_count = (
        RollbackRequest.objects.filter(target=OuterRef("pk"), status__in=OPEN_STATUSES)
        .order_by()
        .values("target")
        .annotate(n=Count("pk"))
        .values("n")
    )
    stored = Target.objects.annotate(
        snapshot_id=Subquery(latest_verified.values("pk")[:1]),
        snapshot_at=Subquery(latest_verified.values("started_at")[:1]),
        open_requests=Coalesce(Subquery(open_count), 0),
    )
    if names is not None:
        stored = stored.filter(name__in=names)
    fields = ("pk", "name", "state", "state_detail", "pending_count", "current_heads", "tags", "last_synced_at")
    by_name = {v[1]: v for v in stored.values_list(*fields, "snapshot_id", "snapshot_at", "open_requests")}
    now = timezone.now()
    labels = dict(TargetState.choices)
    wanted = set(configured_names()) if names is None else set(names)
    rows = []
    for name in sorted(wanted | set(by_name)):
        t = by_name.get(name)
        if t is None:
            rows.append(_unsynced_row(name))
            continue
        pk, _, raw_state, detail, pending, heads, tags, synced_at, snapshot_id, taken, requests = t
        column = matrix_state(raw_state)
        rows.append(
            FleetRow(
                name=name,
                pk=pk,
                matrix_state=column,
                state=raw_state,
                state_label=labels.get(raw_state, raw_state),
                state_detail=detail,
                behind=pending if column == BEHIND else 0,
                heads=list(heads),
                tags=dict(tags or {}),
                snapshot_id=snapshot_id,
                snapshot_at=taken,
                snapshot_age_seconds=(now - taken).total_seconds() if taken else None,
                open_requests=requests,
                last_synced_at=synced_at,
            )
        )
    all_tags: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.tags.items():
            all_tags.setdefault(key, set()).add(value)
    total = len(rows)
    if tag is not None:
        rows = [row for row in rows if row.tags.get(tag[0]) == tag[1]]
    counts = dict.fromkeys(MATRIX_STATES, 0)
    for row in rows:
        counts[row.matrix_state] += 1
    if state is not None:
        rows = [row for row in rows if row.matrix_state == state]
    return FleetMatrix(
        rows=rows, counts=counts, tags={key: sorted(values) for key, values in sorted(all_tags.items())}, total=total
    )
