"""Forms and display helpers of the rollback request admin (kept apart so admin/rollback.py stays short)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from django import forms
from django.conf import settings

from opsapp.models import Snapshot, SnapshotStatus
from opsapp.targets import configured_names

# Statements the destructive analysis flags; used only to highlight lines of the preview.
_VERSION_TABLE = re.compile(r"^\s*DELETE\s+FROM\s+alembic_version\b", re.IGNORECASE)
_DESTRUCTIVE_LINE = re.compile(
    r"^\s*(DROP\s+TABLE|TRUNCATE|DELETE\s+FROM|ALTER\s+TABLE\s+.*\b(DROP\s+COLUMN|TYPE)\b)",
    re.IGNORECASE,
)


def _snapshot_label(snapshot: Snapshot) -> str:
    when = snapshot.started_at.strftime("%Y-%m-%d %H:%M:%S UTC") if snapshot.started_at else "?"
    heads = ", ".join(h[:12] for h in snapshot.heads) or "no heads"
    return f"#{snapshot.pk} of {snapshot.target.name} at {heads}, taken {when}"


class SnapshotChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Snapshot) -> str:
        return _snapshot_label(obj)


def verified_snapshots(target_id: int | None = None):
    qs = Snapshot.objects.filter(status=SnapshotStatus.VERIFIED).select_related("target").order_by("-started_at")
    if target_id is not None:
        qs = qs.filter(target_id=target_id)
    return qs


class RequestDowngradeForm(forms.Form):
    """The "Request downgrade" form: the add view of RollbackRequest."""

    required_css_class = "required"  # the admin's bold labels, plus the marker in request_form.html

    target = forms.ChoiceField(label="Target")
    to = forms.CharField(
        label="Downgrade to revision",
        max_length=255,
        help_text="Full id, unique prefix, branch@rev, base, or -N (relative).",
    )
    reason = forms.CharField(
        label="Reason",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        error_messages={"required": "Give a reason for the downgrade."},
    )
    snapshot = SnapshotChoiceField(
        label="Snapshot (optional)",
        queryset=Snapshot.objects.none(),
        required=False,
        help_text="A verified snapshot taken at the target's current heads; you can also attach one later.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["target"].choices = [(name, name) for name in configured_names()]
        self.fields["snapshot"].queryset = verified_snapshots()

    def clean_to(self) -> str:
        return self.cleaned_data["to"].strip()


class AttachSnapshotForm(forms.Form):
    snapshot = SnapshotChoiceField(label="Verified snapshot", queryset=Snapshot.objects.none())

    def __init__(self, *args, target_id: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["snapshot"].queryset = verified_snapshots(target_id)


class ExecuteForm(forms.Form):
    code = forms.CharField(
        label="Verification code",
        max_length=64,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "size": 16}),
        help_text="The code the approver received by email.",
    )

    def clean_code(self) -> str:
        return self.cleaned_data["code"].strip()


@dataclass(frozen=True)
class SqlLine:
    text: str
    destructive: bool


def sql_lines(sql: str, destructive: list[dict] | None = None) -> list[SqlLine]:
    """The preview split into lines for display, the lines of destructive statements marked for highlighting.

    Alembic's offline output puts a blank line after every statement, which reads double-spaced:
    the display keeps one blank line only before each "-- Running downgrade" step (and the final
    COMMIT), so a step's statements sit together. The stored preview (and its hash) is untouched.
    """
    marked: set[str] = set()
    for item in destructive or []:
        marked.update(line.strip() for line in str(item.get("statement") or "").splitlines() if line.strip())
    lines: list[SqlLine] = []
    for line in (sql or "").splitlines():
        if not line.strip():
            continue
        if (line.startswith("-- ") or line.strip().upper() == "COMMIT;") and lines:
            lines.append(SqlLine("", False))
        # Alembic's own bookkeeping (DELETE FROM alembic_version when a branch ends) loses no data.
        bookkeeping = bool(_VERSION_TABLE.match(line))
        lines.append(SqlLine(line, (bool(_DESTRUCTIVE_LINE.match(line)) and not bookkeeping) or line.strip() in marked))
    return lines


def max_code_attempts() -> int:
    return settings.OPS_CODE_MAX_ATTEMPTS
