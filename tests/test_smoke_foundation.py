from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from opsapp.models import AuditEvent
from opsapp.services.actors import Actor
from opsapp.services.audit.chain import GENESIS_HASH
from opsapp.services.audit.log import append_event


@pytest.mark.django_db
def test_roles_exist_after_migrate():
    assert set(Group.objects.values_list("name", flat=True)) >= {"operators", "approvers", "auditors"}


@pytest.mark.django_db
def test_append_event_chains_hashes():
    first = append_event(action="stamp", outcome="info", actor=Actor.cron(), message="one")
    second = append_event(action="stamp", outcome="info", actor=Actor.cron(), message="two")
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash
    assert AuditEvent.objects.count() == 2
