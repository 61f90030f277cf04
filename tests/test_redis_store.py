"""What is particular to RedisStore (the shared contract is tests/test_store_contract*.py).

One round trip per operation, the same hold message as DatabaseStore, exact times,
commands that redis-py resends after a lost reply, refused writes, configuration errors.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from django_onceonly import LockLost, StoreUnavailable, check_lock
from django_onceonly.stores import RedisStore, get_store
from django_onceonly.stores.base import ClaimRequest, TakenKeys
from tests.conftest import delete_redis_test_keys
from tests.redis_server import RedisServer, needs_redis_server

UTC = dt.UTC


class CountingConnection(redis.Connection):
    """A real connection that counts the requests it sends (a pipeline sends one)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def store(settings: Any) -> Iterator[RedisStore]:
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = settings.REDIS_TEST_CACHE
    delete_redis_test_keys()
    chosen = get_store()
    assert isinstance(chosen, RedisStore)
    yield chosen
    delete_redis_test_keys()


@pytest.fixture
def counting(settings: Any) -> Iterator[None]:
    base = settings.CACHES[settings.REDIS_TEST_CACHE]
    options = {
        **base["OPTIONS"],
        "CONNECTION_POOL_KWARGS": {"connection_class": CountingConnection},
    }
    # Another spelling of the same server: django-redis shares a pool per URL.
    location = str(base["LOCATION"]).replace("127.0.0.1", "localhost")
    entry = {**base, "LOCATION": location, "OPTIONS": options}
    settings.CACHES = {**settings.CACHES, "counted": entry}
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = "counted"
    delete_redis_test_keys()
    yield
    delete_redis_test_keys()


def request(key: str, now: dt.datetime, lease: dt.timedelta, **extra: Any) -> ClaimRequest:
    return ClaimRequest(
        scope="",
        key=key,
        token=extra.pop("token", "t-" + key + now.isoformat()),
        now=now,
        lease_expires_at=now + lease,
        after_lease=extra.pop("after_lease", "reclaim"),
        **extra,
    )


@pytest.mark.services("redis")
def test_each_operation_is_one_round_trip(counting: None, settings: Any) -> None:
    def trips(call: Any) -> int:
        before = CountingConnection.sent
        call()
        return CountingConnection.sent - before

    # First calls load the scripts and open the connection; count the steady state.
    warm = check_lock("warm", lease=0.001)
    warm.extend(60)
    warm.complete(1)
    check_lock("warm")
    check_lock("warm-2").release()
    check_lock("warm-3").fail("x")

    owner: list[Any] = []
    assert trips(lambda: owner.append(check_lock("k", lease=60))) == 1
    assert trips(lambda: owner[0].extend(120)) == 1
    assert trips(lambda: check_lock("k")) == 1  # duplicate in progress
    assert trips(lambda: owner[0].complete({"id": 1})) == 1
    answers: list[Any] = []
    assert trips(lambda: answers.append(check_lock("k"))) == 1  # duplicate + its result
    assert answers[0].result == {"id": 1}
    released = check_lock("r")
    assert trips(released.release) == 1
    failed = check_lock("f")
    assert trips(lambda: failed.fail("no")) == 1
    # A key this process has seen taken is read first (HMGET): a live record is the
    # answer in that one read; a stale one goes on to the claim script, a second trip.
    # A process that has not seen the key runs the script at once.
    settings.ONCEONLY_AFTER_LEASE = "hold"
    check_lock("stale", lease=0.001)
    time.sleep(0.01)
    assert trips(lambda: answers.append(check_lock("stale"))) == 2
    assert answers[-1].record_status == "unknown"  # a stale lease turned unknown
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    check_lock("stale-2", lease=0.001)
    time.sleep(0.01)
    assert trips(lambda: answers.append(check_lock("stale-2"))) == 2
    assert answers[-1].locked  # a stale lease taken over
    check_lock("stale-3", lease=0.001)
    time.sleep(0.01)
    get_store()._taken = TakenKeys()  # type: ignore[attr-defined]  # another process
    assert trips(lambda: answers.append(check_lock("stale-3"))) == 1
    assert answers[-1].locked


@pytest.mark.parametrize(
    "lease_end",
    [
        dt.datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(1999, 12, 31, 0, 0, 0, tzinfo=UTC),
        dt.datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
        dt.datetime(2100, 3, 1, 12, 30, 5, 1, tzinfo=UTC),
    ],
    ids=str,
)
@pytest.mark.services("redis")
def test_hold_message_reads_like_database_stores(store: RedisStore, lease_end: dt.datetime) -> None:
    lease = dt.timedelta(minutes=5)
    store.claim(request("k", lease_end - lease, lease))

    outcome = store.claim(request("k", lease_end, lease, after_lease="hold", token="other"))

    assert not outcome.acquired
    assert outcome.lease_expired
    assert outcome.record.error == (
        f"lease ended at {lease_end:%Y-%m-%d %H:%M:%S%z} without an outcome; the owner may "
        "have crashed after acting. Release it to run again."
    )


@pytest.mark.services("redis")
def test_times_round_trip_to_the_microsecond(store: RedisStore) -> None:
    now = dt.datetime(2031, 7, 4, 12, 0, 0, 123457, tzinfo=UTC)
    sent = request("k", now, dt.timedelta(seconds=30, microseconds=1))

    store.claim(sent)

    record = store.get("", "k")
    assert record is not None
    assert record.created_at == now
    assert record.lease_expires_at == sent.lease_expires_at


@pytest.mark.services("redis")
def test_naive_datetimes_work_without_use_tz(store: RedisStore, settings: Any) -> None:
    settings.USE_TZ = False

    lock = check_lock("k", ttl=60)
    lock.complete("done")

    record = store.get("", "k")
    assert record is not None
    assert record.completed_at is not None
    assert record.completed_at.tzinfo is None
    assert check_lock("k").result == "done"


@pytest.mark.services("redis")
def test_a_resent_claim_or_finish_from_the_owner_is_accepted(store: RedisStore) -> None:
    # redis-py resends a command after a connection error; the first copy may have run.
    now = dt.datetime.now(UTC)
    claim = request("k", now, dt.timedelta(seconds=60))
    assert store.claim(claim).acquired
    assert store.claim(claim).acquired
    finish: dict[str, Any] = {
        "status": "completed",
        "result_json": '{"id":1}',
        "error": "",
        "now": now,
        "expires_at": now + dt.timedelta(hours=1),
    }
    store.finish("", "k", claim.token, **finish)
    store.finish("", "k", claim.token, **finish)

    with pytest.raises(LockLost):
        store.finish("", "k", claim.token, **{**finish, "result_json": '{"id":2}'})
    record = store.get("", "k")
    assert record is not None
    assert (record.result, record.duplicates_blocked) == ({"id": 1}, 0)


@pytest.mark.services("redis")
def test_transactional_claims_are_refused_and_write_nothing(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="transactional=True is not possible with RedisStore"):
        check_lock("k", transactional=True)

    assert store.get("", "k") is None


def test_a_cache_that_is_not_django_redis_is_refused(settings: Any) -> None:
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = "default"  # LocMemCache in the test settings

    with pytest.raises(ImproperlyConfigured, match=r"must use django_redis\.cache\.RedisCache"):
        check_lock("k")


@needs_redis_server
def test_a_server_out_of_memory_is_unavailable_and_nothing_is_half_written(
    tmp_path: Path, settings: Any
) -> None:
    server = RedisServer(tmp_path).start()
    settings.CACHES = {**settings.CACHES, "own": server.cache()}
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = "own"
    try:
        owner = check_lock("charge-7", lease=60)
        client = server.client()
        client.config_set("maxmemory", 1)

        with pytest.raises(StoreUnavailable, match="maxmemory"):
            check_lock("charge-8")
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            owner.complete("charged")

        client.config_set("maxmemory", 0)
        assert get_store().get("", "charge-8") is None
        record = get_store().get("", "charge-7")
        assert record is not None
        assert record.status == "in_progress"
        owner.complete("charged")
        assert check_lock("charge-7").result == "charged"
    finally:
        server.stop(signal.SIGKILL)


# What a second claim at `now` finds, set up by a first claim at T0 (lease 60 s) and,
# where given, its outcome; and the second claim's options.
T0 = dt.datetime(2031, 7, 4, 12, 0, 0, tzinfo=UTC)
LATER = {
    "live claim of another owner": (None, T0 + dt.timedelta(seconds=10), {}),
    "completed, not expired": ("completed", T0 + dt.timedelta(seconds=10), {}),
    "failed, not expired": ("failed", T0 + dt.timedelta(seconds=10), {}),
    "unknown (never expires)": ("unknown", T0 + dt.timedelta(days=400), {}),
    "completed and expired": ("completed", T0 + dt.timedelta(hours=2), {}),
    "stale lease, reclaim": (None, T0 + dt.timedelta(seconds=61), {}),
    "stale lease, hold": (None, T0 + dt.timedelta(seconds=61), {"after_lease": "hold"}),
    "stale lease, other fingerprint": (None, T0 + dt.timedelta(seconds=61), {"fingerprint": "b"}),
    "the same claim resent": (None, T0 + dt.timedelta(seconds=1), {"token": "first"}),
    "a retry resuming its claim": (None, T0 + dt.timedelta(seconds=1), {"resume_token": "first"}),
}


@pytest.mark.parametrize("case", list(LATER))
@pytest.mark.services("redis")
def test_reading_a_key_seen_taken_first_gives_the_scripts_answer(
    store: RedisStore, case: str
) -> None:
    outcome_status, now, options = LATER[case]
    lease = dt.timedelta(seconds=60)

    def setup() -> None:
        store.force_release("", "k")
        first = request("k", T0, lease, token="first", fingerprint="a")
        assert store.claim(first).acquired
        if outcome_status is not None:
            store.finish(
                "",
                "k",
                "first",
                status=outcome_status,
                result_json='{"id": 1}' if outcome_status == "completed" else None,
                error="" if outcome_status == "completed" else "no",
                now=T0,
                expires_at=None if outcome_status == "unknown" else T0 + dt.timedelta(hours=1),
            )

    answers = []
    for seen_taken in (True, False):
        setup()
        store._taken = TakenKeys()
        if seen_taken:
            store._taken.add(("", "k"))
        second = request("k", now, lease, **{"token": "second", **options})
        answer = store.claim(second)
        answers.append((answer, store.get("", "k")))

    (read_first, after_read_first), (script, after_script) = answers
    assert read_first.acquired == script.acquired
    assert read_first.lease_expired == script.lease_expired
    assert read_first.record == script.record
    assert after_read_first == after_script


@pytest.mark.services("redis")
def test_the_keys_of_recent_records_are_remembered_and_still_right_past_the_bound(
    store: RedisStore,
) -> None:
    from django_onceonly.stores.redis import KEYS_KEPT

    first = store.keys("tenant", "order-1")
    assert store.keys("tenant", "order-1") is first  # remembered: no second digest
    assert store.keys("", "order-1") != first  # the scope is part of the name
    names = [("s", f"k-{i}") for i in range(KEYS_KEPT * 2 + 5)]
    computed = {name: store.keys(*name) for name in names}
    assert len(store._known_keys) <= KEYS_KEPT
    # Forgotten or not, every name still gets its own keys, in one slot's hash tag.
    fresh = RedisStore(store.alias)
    for name in (names[0], names[KEYS_KEPT], names[-1], ("tenant", "order-1")):
        keys = fresh.keys(*name)
        assert store.keys(*name) == keys
        assert keys.record.startswith(keys.dirty.removesuffix("dirty"))
    assert computed[names[0]] == fresh.keys(*names[0])
    # And a claim, its completion and a duplicate check on a forgotten name all agree.
    lock = check_lock(names[0][1], scope=names[0][0])
    lock.complete({"sent": True})
    assert check_lock(names[0][1], scope=names[0][0]).result == {"sent": True}
