"""The shop proves its email tasks idempotent with django-onceonly's test kit.

This is the worked example of ``docs/testing-kit.md``: each test runs a real task body
against the configured store and counts the emails Django's test mail backend received.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from shop.tasks import send_welcome_email


def emails_sent() -> int:
    return len(mail.outbox)


@pytest.fixture
def customer(transactional_db: Any, settings: Any) -> Any:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    return get_user_model().objects.create_user("ann", email="ann@example.com")


def test_a_welcome_email_delivered_twice_is_sent_once(
    onceonly_kit: ModuleType, customer: Any
) -> None:
    report = onceonly_kit.deliver_twice(
        send_welcome_email, args=(customer.pk,), side_effects=emails_sent
    )

    assert report.side_effects == 1, report
    assert report.bodies_run == 1


def test_a_crash_after_the_send_is_held_for_a_person(
    onceonly_kit: ModuleType, customer: Any, settings: Any
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "hold"  # the shop's setting: never send twice

    report = onceonly_kit.crash_after_side_effect(
        send_welcome_email, args=(customer.pk,), side_effects=emails_sent
    )

    assert report.side_effects == 1, report
    assert report.record is not None
    assert report.record.status == "unknown"


def test_no_email_goes_out_unprotected_while_the_store_is_down(
    onceonly_kit: ModuleType, customer: Any
) -> None:
    report = onceonly_kit.store_down(
        send_welcome_email, args=(customer.pk,), side_effects=emails_sent
    )

    assert report.side_effects == 0, report
