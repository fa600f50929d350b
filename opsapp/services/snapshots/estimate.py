"""How big the next dump of a target will be: the honest total of a snapshot's progress bar.

`pg_dump -Fc` compresses, so its archive ends well below `pg_database_size`
(which also counts indexes, free space and dead rows): a bar against the
database's size would stop at 30 % and its ETA would be several times too
long. The best guide is this target's own history: an earlier snapshot
recorded both its file's size and the database's size when it began, and the
ratio between them carries over to the database's size now. Without such a
snapshot (a target's first) the bar runs against the database's size, as an
upper bound, and says so: the bar moves, it may end early, and the time left
is "at most" (UPPER_BOUND). Without even that size there is no total.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.template.defaultfilters import filesizeformat

from opsapp.models import Snapshot, SnapshotStatus, Target

USABLE = (SnapshotStatus.COMPLETE, SnapshotStatus.VERIFIED, SnapshotStatus.PRUNED)
# How a basis that is an upper bound begins (Operation.progress_estimate): the page says "at most".
UPPER_BOUND = "an upper bound"


@dataclass(frozen=True)
class DumpEstimate:
    """The expected archive size in bytes (None: cannot be told) and what it is based on, in words."""

    total: int | None
    basis: str


def estimate_dump_size(target: Target, database_size: int | None) -> DumpEstimate:
    """Expected size of a dump of `target` whose database is `database_size` bytes now.

    From the newest finished snapshot of the target that recorded the
    database's size: its archive-to-database ratio times the size now (or,
    when the size now cannot be read, its archive size as it was).
    """
    earlier = (
        Snapshot.objects.filter(target=target, status__in=USABLE, size__gt=0, database_size__gt=0)
        .order_by("-started_at", "-id")
        .only("pk", "size", "database_size")
        .first()
    )
    if earlier is None:
        if database_size:
            return DumpEstimate(
                database_size,
                f"{UPPER_BOUND}: the database's size, since no earlier snapshot of this target tells how much "
                "its compressed archive is smaller",
            )
        return DumpEstimate(None, "no earlier snapshot of this target to estimate the dump's final size from")
    ratio = earlier.size / earlier.database_size
    percent = max(1, round(ratio * 100))
    if not database_size:
        return DumpEstimate(earlier.size, f"estimated: the size of snapshot #{earlier.pk}")
    return DumpEstimate(
        max(1, round(database_size * ratio)),
        f"estimated from snapshot #{earlier.pk}, whose archive was {percent}% of the database's size "
        f"(the database is {filesizeformat(database_size)} now)",
    )
