"""Property: the verifier's fast read gives every stored event exactly the reference canonical payload.

`chain.payload_rows` (on PostgreSQL a COPY text stream turned line by
line into the payload) and `chain.row_payload` must give the bytes of
`chain.canonical_payload` for any row the table can hold, not only the rows
`append_event` writes: generated events with odd unicode, control
characters, quotes, backslashes, tabs and newlines, nested detail with nulls,
big integers and floats, NULL and 64-bit ids, IPv4 and IPv6. Deterministic
(`derandomize=True`, no deadline).
"""

from __future__ import annotations

import hmac
import itertools
import json
from datetime import UTC, datetime

import pytest
from django.db import connection
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from opsapp.models import AuditEvent
from opsapp.services.audit.chain import (
    GENESIS_HASH,
    batches,
    canonical_detail,
    canonical_encoder,
    canonical_payload,
    compute_mac,
    event_fields,
    mac_function,
    payload_rows,
    row_payload,
)
from opsapp.services.audit.verify import verify_chain
from tests.test_audit import TABLE, add_events, raw

_TRICKY = "\t\n\r\\\"'\x01\x08\x0b\x0c\x1f\x7f\u2028\u2029\ufeff\U0001f600é ß"
# Any character PostgreSQL text can hold (not NUL, not a lone surrogate), with the awkward ones often.
_CHARS = st.one_of(st.sampled_from(_TRICKY), st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


def _text(max_size: int):
    return st.text(alphabet=_CHARS, max_size=max_size)


_INT8 = st.integers(-(2**63), 2**63 - 1)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**100), 2**100),
    st.floats(allow_nan=False, allow_infinity=False),
    _text(20),
)
DETAIL = st.dictionaries(
    _text(8),
    st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text(6), inner, max_size=4)),
    max_size=6,
)
IPS = st.one_of(st.none(), st.ip_addresses().map(str))
EVENTS = st.fixed_dictionaries(
    {
        "created_at": st.datetimes(
            min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
        ),
        "actor_user_id": st.none() | _INT8,
        "actor": _text(150),
        "action": _text(40),
        "outcome": _text(20),
        "target_name": _text(100),
        "request_id": st.none() | _INT8,
        "snapshot_id": st.none() | _INT8,
        "from_revision": _text(60),
        "to_revision": _text(60),
        "message": _text(200),
        "detail": DETAIL,
        "client_ip": IPS,
        "user_agent": _text(80),
        "prev_hash": _text(64),
        "key_id": st.just("") | _text(40),
    }
)
_seqs = itertools.count(1)


def _settings(examples: int):
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def _fast(seq: int) -> bytes:
    rows = list(payload_rows(seq - 1, 1, limit=1))
    assert rows and rows[0][0] == seq
    return rows[0][1]


def _row(seq: int) -> tuple:
    return next(iter(batches(seq - 1, 1)))[0]


def _reference(seq: int) -> bytes:
    """The reference: the ORM's event (detail parsed by json.loads) through the generic canonical encoder."""
    return canonical_payload(event_fields(AuditEvent.objects.get(seq=seq)))


@pytest.mark.django_db
@_settings(200)
@given(fields=EVENTS)
@example(
    fields={
        "created_at": datetime(2026, 1, 31, 12, 0, tzinfo=UTC),
        "actor_user_id": -(2**63),
        "actor": "o\tl\\ga\n",
        "action": '"quoted"',
        "outcome": "\x01",
        "target_name": "\\N",
        "request_id": 2**63 - 1,
        "snapshot_id": None,
        "from_revision": "\\t",
        "to_revision": "\u2028",
        "message": "tab\there \\ back\\slash\r\nnew line \U0001f600",
        "detail": {"b": [1.5, None, True, 2**70], "a": {"ü": "ß", "": "\t\\"}, "ab": -0.0, "aa": 1e16},
        "client_ip": "2001:db8::1",
        "user_agent": "",
        "prev_hash": GENESIS_HASH,
        "key_id": "k\\1",
    }
)
def test_the_fast_read_gives_every_stored_event_the_reference_canonical_payload(fields):
    seq = next(_seqs)
    AuditEvent.objects.create(seq=seq, hash="h", mac="m", **fields)
    reference = _reference(seq)
    assert _fast(seq) == reference
    assert row_payload(_row(seq)) == reference


@pytest.mark.django_db
@pytest.mark.parametrize(
    "stored",
    [
        '{"b": 1.50, "a": 2, "ab": -0, "aa": 1e2, "big": 123456789012345678901234567890}',
        '{"x": 0.1000000000000000055511151231257827, "y": 1.0e-400, "z": 1e400}',
        '{"dup": 1, "dup": 2, "ß": {"zz": [], "z": {}}, "Z": "\\u0001\\"\\\\\\t"}',
        '[1, "two", null]',
        '"just a string"',
        "12.5",
    ],
)
def test_detail_stored_as_json_text_the_console_never_writes_still_serializes_as_the_reference(stored):
    """jsonb written by hand (numbers as jsonb keeps them, keys in jsonb's order, not an object at all)."""
    if connection.vendor != "postgresql":
        pytest.skip("jsonb's own number and key forms")
    seq = next(_seqs)
    AuditEvent.objects.create(seq=seq, created_at=datetime(2026, 1, 1, tzinfo=UTC), actor="a", prev_hash="p")
    raw(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
    raw(f"UPDATE {TABLE} SET detail = %s::jsonb WHERE seq = %s", (stored, seq))
    raw(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
    reference = _reference(seq)
    assert _fast(seq) == reference
    assert row_payload(_row(seq)) == reference


@_settings(300)
@given(
    value=st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text(6), inner)),
    indent=st.sampled_from([None, 1]),
    sort_keys=st.booleans(),
    ensure_ascii=st.booleans(),
)
@example(value={}, indent=None, sort_keys=False, ensure_ascii=False)
def test_canonical_detail_of_any_json_text_is_the_generic_encoders_output(value, indent, sort_keys, ensure_ascii):
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    expected = canonical_encoder(json.loads(text))
    assert canonical_detail(text) == expected
    assert canonical_detail(f" {text} ") == expected  # surrounding whitespace takes the reference path
    if not isinstance(value, str):  # a str is stored JSON text, by contract
        assert canonical_detail(value) == canonical_encoder(value)


def test_malformed_detail_text_raises_as_json_loads_does():
    for text in ('{"a": 1', '{"a": 1} x', "", "nope"):
        with pytest.raises(ValueError):
            canonical_detail(text)


@_settings(200)
@given(secret=st.binary(min_size=0, max_size=200), event_hash=st.text(max_size=80))
@example(secret=b"k" * 64, event_hash=GENESIS_HASH)
@example(secret=b"k" * 65, event_hash=GENESIS_HASH)
def test_the_precomputed_mac_is_hmac_sha256(secret, event_hash):
    expected = hmac.digest(secret, event_hash.encode(), "sha256").hex()
    assert mac_function(secret)(event_hash) == expected
    if event_hash.isascii():
        assert compute_mac(secret, event_hash) == expected


@pytest.mark.django_db(transaction=True)
def test_a_verify_that_stops_early_leaves_the_connection_usable_outside_a_transaction():
    """Stopping at a broken event cancels the rest of the stream; the result still reads the head."""
    add_events(30)
    raw(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
    raw(f"UPDATE {TABLE} SET message = 'rewritten' WHERE seq = 3")
    raw(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
    result = verify_chain(batch_size=2)
    assert (result.ok, result.first_bad_seq, result.head_seq) == (False, 3, 30)
    assert AuditEvent.objects.count() == 30
