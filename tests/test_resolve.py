"""Resolving ``unknown`` intents against a provider: a real HTTP server on 127.0.0.1.

The fake provider keeps the messages it accepted under the idempotency key the sender
gave it, and answers lookups by that key, as email and payment APIs do. Resolvers ask it
over HTTP; nothing is mocked.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from celery import shared_task
from django.core.management import call_command

from django_onceonly import Lock, check_lock
from django_onceonly.celery import OnceTask
from django_onceonly.resolve import Resolution, resolve_unknown, resolvers_from_celery
from django_onceonly.stores import Record, RedisStore
from django_onceonly.stores.audit import sync_audit
from tests.conftest import Backend

TASK = "shop.send_welcome_email"


class Provider:
    """A provider's lookup API: GET /v1/messages?idempotency_key=K."""

    def __init__(self) -> None:
        self.accepted: dict[str, dict[str, Any]] = {}
        self.failing_with: int | None = None  # answer every lookup with this status
        self.lookups = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.lookups += 1
                query = parse_qs(urlparse(self.path).query)
                key = query.get("idempotency_key", [""])[0]
                if provider.failing_with is not None:
                    self._answer(provider.failing_with, {"error": "try later"})
                elif key in provider.accepted:
                    self._answer(200, provider.accepted[key])
                else:
                    self._answer(404, {"error": "no such message"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    running = Provider()
    yield running
    running.close()


def lookup_resolver(provider: Provider) -> Any:
    """The resolver a team writes: look the intent up by its key at the provider."""

    def resolve(record: Record) -> Resolution:
        url = f"{provider.url}/v1/messages?idempotency_key={record.key}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return Resolution.sent(json.load(answer))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return Resolution.not_sent("the provider has no such message")
            return Resolution.unknown(f"the provider answered {exc.code}")

    return resolve


def unknown_intent(key: str, error: str = "TimeoutError: no answer from SMTP") -> Lock:
    lock = check_lock(key, task_name=TASK, task_id="t-1")
    lock.fail(error, outcome_unknown=True)
    return lock


def sync_if_redis(backend: Backend) -> None:
    # With RedisStore the candidates come from the audit copy of the records.
    if isinstance(backend.store, RedisStore):
        sync_audit()


def test_unknown_intent_the_provider_has_is_completed_with_its_answer(
    backend: Backend, provider: Provider
) -> None:
    unknown_intent("welcome_email_1")
    provider.accepted["welcome_email_1"] = {"id": "msg-1", "status": "delivered"}
    sync_if_redis(backend)

    report = resolve_unknown(resolvers={TASK: lookup_resolver(provider)})

    assert report.sent == ["welcome_email_1"]
    record = backend.record("welcome_email_1")
    assert record is not None
    assert record.status == "completed"
    assert record.result == {"id": "msg-1", "status": "delivered"}
    again = check_lock("welcome_email_1")
    assert again.duplicate
    assert again.result == {"id": "msg-1", "status": "delivered"}


def test_unknown_intent_the_provider_never_got_is_released_and_runs_again(
    backend: Backend, provider: Provider
) -> None:
    unknown_intent("welcome_email_2")
    sync_if_redis(backend)

    report = resolve_unknown(resolvers={TASK: lookup_resolver(provider)})

    assert report.released == ["welcome_email_2"]
    assert backend.record("welcome_email_2") is None
    assert check_lock("welcome_email_2").locked


def test_a_provider_that_cannot_tell_leaves_the_intent_for_a_person_with_the_reason(
    backend: Backend, provider: Provider
) -> None:
    unknown_intent("welcome_email_3")
    provider.failing_with = 503
    sync_if_redis(backend)

    first = resolve_unknown(resolvers={TASK: lookup_resolver(provider)})
    sync_if_redis(backend)
    second = resolve_unknown(resolvers={TASK: lookup_resolver(provider)})

    assert first.left == second.left == ["welcome_email_3"]
    record = backend.record("welcome_email_3")
    assert record is not None
    assert record.status == "unknown"
    # The original error stays; the latest reason replaces the one before it.
    assert record.error == (
        "TimeoutError: no answer from SMTP | resolver: the provider answered 503"
    )
    assert check_lock("welcome_email_3").duplicate


def test_a_resolver_that_raises_leaves_the_record_untouched(
    backend: Backend, provider: Provider
) -> None:
    unknown_intent("welcome_email_4")
    before = backend.record("welcome_email_4")
    provider.close()  # connection refused from now on
    sync_if_redis(backend)

    report = resolve_unknown(resolvers={TASK: lookup_resolver(provider)})

    assert report.failed == ["welcome_email_4"]
    assert backend.record("welcome_email_4") == before


def test_a_record_acted_on_while_the_provider_answered_is_not_touched(
    backend: Backend, provider: Provider
) -> None:
    unknown_intent("welcome_email_5")
    sync_if_redis(backend)
    newer: list[Lock] = []

    def slow_resolver(record: Record) -> Resolution:
        # Meanwhile a person releases the intent and a new attempt claims it.
        backend.store.force_release(record.scope, record.key)
        newer.append(check_lock(record.key, task_name=TASK))
        return Resolution.sent({"id": "stale answer"})

    report = resolve_unknown(resolvers={TASK: slow_resolver})

    assert report.changed == ["welcome_email_5"]
    record = backend.record("welcome_email_5")
    assert record is not None
    assert record.status == "in_progress"
    assert record.owner_token == newer[0].token


def test_stale_leases_are_resolved_under_hold_and_left_alone_under_reclaim(
    backend: Backend, provider: Provider, settings: Any
) -> None:
    check_lock("crashed", lease=0.001, task_name=TASK)
    time.sleep(0.01)  # past the 1 ms lease
    provider.accepted["crashed"] = {"id": "msg-9"}
    sync_if_redis(backend)

    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    assert resolve_unknown(resolvers={TASK: lookup_resolver(provider)}).examined == 0
    settings.ONCEONLY_AFTER_LEASE = "hold"
    report = resolve_unknown(resolvers={TASK: lookup_resolver(provider)})

    assert report.sent == ["crashed"]
    record = backend.record("crashed")
    assert record is not None
    assert (record.status, record.result) == ("completed", {"id": "msg-9"})


def test_dry_run_asks_the_provider_and_writes_nothing(backend: Backend, provider: Provider) -> None:
    unknown_intent("welcome_email_6")
    provider.accepted["welcome_email_6"] = {"id": "msg-6"}
    before = backend.record("welcome_email_6")
    sync_if_redis(backend)

    report = resolve_unknown(resolvers={TASK: lookup_resolver(provider)}, dry_run=True)

    assert report.sent == ["welcome_email_6"]
    assert provider.lookups == 1
    assert backend.record("welcome_email_6") == before


def test_records_without_a_resolver_are_left_and_counted(backend: Backend) -> None:
    lock = check_lock("orphan", task_name="shop.no_resolver")
    lock.fail("crashed", outcome_unknown=True)
    sync_if_redis(backend)

    report = resolve_unknown(resolvers={})

    assert report.no_resolver == ["orphan"]
    record = backend.record("orphan")
    assert record is not None
    assert record.status == "unknown"


# -- OnceTask(once_resolve=...) and manage.py onceonly_resolve ----------------------------

_provider_url: list[str] = []


def resolve_welcome(record: Record) -> Resolution:
    url = f"{_provider_url[0]}/v1/messages?idempotency_key={record.key}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return Resolution.sent(json.load(answer))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return Resolution.not_sent()
        return Resolution.unknown(f"the provider answered {exc.code}")


@shared_task(
    base=OnceTask, name=TASK, once_key="welcome_email_{user_id}", once_resolve=resolve_welcome
)
def send_welcome_email(user_id: int) -> None:  # pragma: no cover - never run here
    raise AssertionError("not run by these tests")


def test_a_task_declares_its_resolver_and_the_command_runs_it(
    backend: Backend, provider: Provider
) -> None:
    _provider_url[:] = [provider.url]
    unknown_intent("welcome_email_7")
    unknown_intent("welcome_email_8")
    provider.accepted["welcome_email_7"] = {"id": "msg-7"}
    sync_if_redis(backend)
    assert resolvers_from_celery()[TASK] is resolve_welcome

    out = StringIO()
    call_command("onceonly_resolve", stdout=out)

    assert out.getvalue().splitlines() == [
        "sent (completed): welcome_email_7",
        "not sent (released): welcome_email_8",
        "Resolved 2 of 2 record(s): 1 sent, 1 released, 0 left, 0 changed meanwhile.",
    ]
    assert backend.record("welcome_email_8") is None
    record = backend.record("welcome_email_7")
    assert record is not None
    assert record.result == {"id": "msg-7"}


def test_the_command_refuses_a_bad_limit() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--limit must be at least 1"):
        call_command("onceonly_resolve", "--limit", "0")


def test_the_beat_task_runs_the_resolvers(backend: Backend, provider: Provider) -> None:
    from django_onceonly.tasks import resolve_unknown as beat_task

    _provider_url[:] = [provider.url]
    unknown_intent("welcome_email_9")
    provider.accepted["welcome_email_9"] = {"id": "msg-9"}
    sync_if_redis(backend)

    counts = beat_task.apply().get()

    assert counts == {
        "sent": 1,
        "released": 0,
        "left": 0,
        "failed": 0,
        "changed": 0,
        "no_resolver": 0,
    }
    record = backend.record("welcome_email_9")
    assert record is not None
    assert record.status == "completed"
