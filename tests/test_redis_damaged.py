"""A record damaged in Redis fails closed with ``DamagedRecord``, never as absent.

Each test claims a key for real, damages its record by hand with raw Redis commands (as
an operator's typo, a script or another application would), then shows that claims,
reads and the owner's writes refuse it with one package error naming the key, that the
work does not run (even with ``ONCEONLY_ON_STORE_ERROR = "run"``), that the audit sync
skips it, and that ``manage.py onceonly_release`` removes it (docs/redis.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from redis import Redis

from django_onceonly import DamagedRecord, OnceOnlyError, StoreUnavailable, check_lock
from django_onceonly.locks import once
from django_onceonly.stores import RedisStore, get_store
from django_onceonly.stores.audit import sync_audit
from tests.conftest import delete_redis_test_keys

pytestmark = pytest.mark.services("redis")

KEY = "charge_order_7"

# kind -> how to damage the record under `name` (a real in-progress claim)
DAMAGE: dict[str, Callable[[Redis, str], Any]] = {
    "a-string-under-the-key": lambda r, name: (r.delete(name), r.set(name, "hello")),
    "a-list-under-the-key": lambda r, name: (r.delete(name), r.rpush(name, "a", "b")),
    "no-status-field": lambda r, name: r.hdel(name, "status"),
    "status-that-is-no-status": lambda r, name: r.hset(name, "status", "done"),
    "no-owner-token": lambda r, name: r.hdel(name, "owner_token"),
    "lease-end-not-a-number": lambda r, name: r.hset(name, "lease_expires_at", "soon"),
    "expiry-in-exponent-notation": lambda r, name: r.hset(name, "expires_at", "1e30"),
    "counter-not-a-number": lambda r, name: r.hset(name, "duplicates_blocked", "many"),
    "creation-time-not-a-number": lambda r, name: r.hset(name, "created_at", "yesterday"),
    "result-not-json": lambda r, name: r.hset(name, "result", '{"charge_id": '),
    "metadata-not-json": lambda r, name: r.hset(name, "metadata", "user=7"),
    "metadata-not-an-object": lambda r, name: r.hset(name, "metadata", "[1, 2]"),
    "text-not-utf8": lambda r, name: r.hset(name, "task_name", b"\xff\xfe"),
}
# Damage that the scripts themselves trip over, before they write (not only Python
# reading the reply): the owner's own writes are refused too.
STRUCTURAL = {
    "a-string-under-the-key",
    "a-list-under-the-key",
    "no-status-field",
    "status-that-is-no-status",
    "no-owner-token",
    "lease-end-not-a-number",
    "expiry-in-exponent-notation",
    "counter-not-a-number",
}


@pytest.fixture
def store(settings: Any) -> Iterator[RedisStore]:
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = settings.REDIS_TEST_CACHE
    delete_redis_test_keys()
    chosen = get_store()
    assert isinstance(chosen, RedisStore)
    yield chosen
    delete_redis_test_keys()


def damage(store: RedisStore, kind: str, key: str = KEY, scope: str = "") -> str:
    name = store.keys(scope, key).record
    DAMAGE[kind](store.connection, name)
    return name


def raw(store: RedisStore, name: str) -> Any:
    """What the key holds, but the duplicate counter and time.

    A result or metadata that is not JSON is found by Python reading the script's reply,
    after the script counted the duplicate (checking the JSON inside every claim would
    cost a parse of the whole result per duplicate).
    """
    conn = store.connection
    kind = conn.type(name)
    if kind == b"hash":
        counted = (b"duplicates_blocked", b"last_duplicate_at")
        return {k: v for k, v in conn.hgetall(name).items() if k not in counted}
    if kind == b"string":
        return conn.get(name)
    if kind == b"list":
        return conn.lrange(name, 0, -1)
    return kind


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_claim_on_a_damaged_record_raises_damaged_record_and_claims_nothing(
    store: RedisStore, kind: str
) -> None:
    check_lock(KEY, lease=60)
    name = damage(store, kind)
    before = raw(store, name)

    with pytest.raises(DamagedRecord) as caught:
        check_lock(KEY)

    error = caught.value
    assert isinstance(error, OnceOnlyError)
    assert not isinstance(error, StoreUnavailable)  # "run" must not run past it
    assert error.key == KEY
    text = str(error)
    assert f"key {KEY!r}" in text
    assert "is damaged" in text
    assert name in text  # the Redis key to inspect
    assert f"manage.py onceonly_release {KEY}" in text
    # Never taken for absent: nobody took the key over.
    assert raw(store, name) == before
    with pytest.raises(DamagedRecord):
        store.get("", KEY)


@pytest.mark.parametrize("kind", sorted(STRUCTURAL))
def test_the_owner_cannot_finish_release_or_extend_a_damaged_record(
    store: RedisStore, kind: str
) -> None:
    lock = check_lock(KEY, lease=60)
    name = damage(store, kind)
    before = raw(store, name)

    for call in (lambda: lock.extend(60), lambda: lock.complete("sent"), lock.release):
        with pytest.raises(DamagedRecord, match="is damaged"):
            call()

    assert raw(store, name) == before
    now = timezone.now()
    with pytest.raises(DamagedRecord):
        store.release_if_unchanged(
            "", KEY, owner_token=lock.token or "", status="in_progress", allow_live=True, now=now
        )


@pytest.mark.parametrize("kind", ["no-status-field", "a-string-under-the-key", "result-not-json"])
def test_the_work_does_not_run_on_a_damaged_record_even_with_on_store_error_run(
    store: RedisStore, settings: Any, kind: str
) -> None:
    settings.ONCEONLY_ON_STORE_ERROR = "run"
    runs: list[int] = []

    @once(key="charge_order_{order_id}")
    def charge(order_id: int) -> str:
        runs.append(order_id)
        return "charged"

    assert charge(7) == "charged"
    damage(store, kind)

    with pytest.raises(DamagedRecord):
        charge(7)

    assert runs == [7]


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_onceonly_release_removes_a_damaged_record_and_the_intent_runs_again(
    store: RedisStore, kind: str
) -> None:
    check_lock(KEY, scope="tenant a", lease=60)
    damage(store, kind, scope="tenant a")

    out = StringIO()
    call_command("onceonly_release", KEY, "--scope", "tenant a", stdout=out)

    assert "Released" in out.getvalue()
    assert check_lock(KEY, scope="tenant a").locked


def test_the_message_quotes_key_and_scope_for_the_shell(store: RedisStore) -> None:
    check_lock("it's 7", scope="tenant a", lease=60)
    damage(store, "no-status-field", key="it's 7", scope="tenant a")

    with pytest.raises(DamagedRecord) as caught:
        check_lock("it's 7", scope="tenant a")

    assert "manage.py onceonly_release 'it'\"'\"'s 7' --scope 'tenant a'" in str(caught.value)
    assert caught.value.scope == "tenant a"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["a-list-under-the-key", "no-status-field", "result-not-json"])
def test_the_audit_sync_skips_a_damaged_record_and_copies_the_others(
    store: RedisStore, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    check_lock(KEY, lease=60)
    check_lock("healthy").complete("ok")
    damage(store, kind)

    with caplog.at_level(logging.ERROR, logger="django_onceonly"):
        report = sync_audit(store=store)

    assert (report.copied, report.damaged) == (1, 1)
    assert any(KEY in r.getMessage() and "cannot read" in r.getMessage() for r in caplog.records)
    from django_onceonly.models import IdempotencyRecord

    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["healthy"]
