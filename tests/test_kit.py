"""The test kit (``django_onceonly.testing.kit``) on real tasks and views, every store.

The kit must tell an idempotent task from one that is not: each helper is run on a
``OnceTask`` and, where it shows the difference, on the same body as a plain task.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from celery import Celery
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from django_onceonly.celery import OnceTask
from tests import drf_views
from tests.conftest import Backend

pytest_plugins = ["django_onceonly.testing.fixtures"]

app = Celery("onceonly_kit", set_as_current=False)
app.conf.update(task_always_eager=True, task_store_eager_result=False)

sent: list[int] = []  # the provider: one entry per email really sent


def emails_sent() -> int:
    return len(sent)


@pytest.fixture(autouse=True)
def _clear() -> None:
    sent.clear()


@app.task(base=OnceTask, bind=True, shared=False, name="kit.welcome", once_key="welcome_{user_id}")
def send_welcome(self: OnceTask, user_id: int) -> dict[str, Any]:
    import time

    time.sleep(0.05)  # long enough for the second delivery to arrive while it runs
    sent.append(user_id)
    return {"message": f"m-{user_id}"}


@app.task(shared=False, name="kit.plain_welcome")
def plain_welcome(user_id: int) -> dict[str, Any]:
    import time

    time.sleep(0.05)
    sent.append(user_id)
    return {"message": f"m-{user_id}"}


def test_deliver_twice_shows_a_once_task_sends_once(
    backend: Backend, onceonly_kit: ModuleType
) -> None:
    report = onceonly_kit.deliver_twice(send_welcome, args=(7,), side_effects=emails_sent)

    assert report.bodies_run == 1
    assert report.side_effects == 1
    assert report.results[-1] == {"message": "m-7"}
    assert report.record is not None
    assert report.record.status == "completed"
    print(report)


def test_deliver_twice_catches_a_plain_task_sending_twice(
    backend: Backend, onceonly_kit: ModuleType
) -> None:
    report = onceonly_kit.deliver_twice(plain_welcome, args=(7,), side_effects=emails_sent)

    assert report.bodies_run == 2
    assert report.side_effects == 2


def test_a_crash_after_the_send_is_retried_under_reclaim_and_the_kit_counts_the_duplicate(
    backend: Backend, onceonly_kit: ModuleType
) -> None:
    report = onceonly_kit.crash_after_side_effect(send_welcome, args=(8,), side_effects=emails_sent)

    # At-least-once: the retry after the lease runs the body again. The provider's own
    # idempotency key (self.once.key) is what absorbs this second send.
    assert report.bodies_run == 2
    assert report.side_effects == 2
    assert report.record is not None
    assert report.record.status == "completed"


def test_a_crash_after_the_send_is_held_for_review_under_hold(
    backend: Backend, onceonly_kit: ModuleType, settings: Any
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "hold"

    report = onceonly_kit.crash_after_side_effect(send_welcome, args=(9,), side_effects=emails_sent)

    assert report.bodies_run == 1
    assert report.side_effects == 1
    assert report.record is not None
    assert report.record.status == "unknown"


def test_store_down_shows_the_body_never_runs_unprotected(
    backend: Backend, onceonly_kit: ModuleType
) -> None:
    report = onceonly_kit.store_down(send_welcome, args=(10,), side_effects=emails_sent)

    assert report.bodies_run == 0
    assert report.side_effects == 0
    assert report.errors


@pytest.mark.urls("tests.drf_urls")
def test_replay_request_shows_a_checkout_runs_once(
    backend: Backend, onceonly_kit: ModuleType
) -> None:
    drf_views.reset_runs()
    User.objects.create_user("kit-alice", password="pw")
    client = APIClient()
    client.login(username="kit-alice", password="pw")
    client.credentials(HTTP_AUTHORIZATION="Basic a2l0LWFsaWNlOnB3")

    report = onceonly_kit.replay_request(
        client,
        "post",
        "/drf/checkout/",
        {"cart": "c-1", "amount": "9.90"},
        format="json",
        side_effects=lambda: len(drf_views.runs_of("checkout")),
    )

    first, second = report.results
    assert first.status_code == second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert report.bodies_run == 1
    assert report.side_effects == 1
