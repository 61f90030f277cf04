from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import factory
from django.utils import timezone

from django_onceonly.models import IdempotencyRecord, Status


class IdempotencyRecordFactory(factory.django.DjangoModelFactory):  # type: ignore[misc]
    class Meta:
        model = IdempotencyRecord

    scope = ""
    key = factory.Sequence(lambda n: f"intent-{n}")
    status = Status.COMPLETED
    owner_token = factory.LazyFunction(lambda: secrets.token_hex(16))
    result: Any = None
    created_at = factory.LazyFunction(timezone.now)
    updated_at = factory.LazyAttribute(lambda record: record.created_at)
    completed_at = factory.LazyAttribute(lambda record: record.created_at)
    expires_at = factory.LazyAttribute(lambda record: record.created_at + dt.timedelta(days=1))

    class Params:
        expired = factory.Trait(
            created_at=factory.LazyFunction(lambda: timezone.now() - dt.timedelta(days=2)),
            expires_at=factory.LazyFunction(lambda: timezone.now() - dt.timedelta(days=1)),
        )
        running = factory.Trait(
            status=Status.IN_PROGRESS,
            completed_at=None,
            expires_at=None,
            lease_expires_at=factory.LazyFunction(lambda: timezone.now() + dt.timedelta(minutes=5)),
        )
