"""RedisStore's key layout: one Cluster hash slot per record, cache prefixes and versions.

Slots are computed with CRC16 (``redis.crc.key_slot``, checked against the examples of
the Redis Cluster specification) and confirmed by a redis-server of the test's own
running in cluster mode, which answers ``CLUSTER KEYSLOT`` and refuses any script whose
keys are in different slots (``CROSSSLOT``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from redis.crc import key_slot

from django_onceonly import check_lock
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import RedisStore, get_store
from django_onceonly.stores.audit import sync_audit
from tests.conftest import delete_redis_test_keys
from tests.redis_server import RedisServer, needs_redis_server

AWKWARD_KEYS = [
    ("", "welcome_email_1"),
    ("", "{user1000}.following"),
    ("tenant-{a}", "}{"),
    ("", "{}"),
    ("{", "}"),
    ("ü" * 10, "🙂{x}🙂"),
]
PREFIXES = ["", "myapp", "{tenant}", "app{1}", "a{b", "b}c"]


@pytest.fixture(scope="module")
def cluster_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A one-node Redis Cluster owning all 16384 slots."""
    directory = tmp_path_factory.mktemp("cluster")
    server = RedisServer(
        directory,
        "none",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(directory / "nodes.conf"),
    ).start()
    client = server.client()
    client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    deadline = time.monotonic() + 20
    while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline, "the one-node cluster did not come up"
        time.sleep(0.05)
    yield server
    server.stop(signal.SIGKILL)


def use_cache(settings: Any, alias: str, entry: dict[str, Any]) -> RedisStore:
    settings.CACHES = {**settings.CACHES, alias: entry}
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = alias
    store = get_store()
    assert isinstance(store, RedisStore)
    return store


@needs_redis_server
def test_crc16_agrees_with_the_cluster_specification_and_the_server(
    cluster_node: RedisServer,
) -> None:
    # Examples from the Redis Cluster specification, "Hash tags".
    examples = [
        b"123456789",
        b"{user1000}.following",
        b"foo{}{bar}",
        b"foo{{bar}}zap",
        b"foo{bar}{zap}",
    ]
    assert key_slot(b"123456789") == 0x31C3  # the CRC16/XMODEM check value
    assert key_slot(b"{user1000}.following") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") != key_slot(b"bar")  # an empty tag: the whole key
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")
    client = cluster_node.client()
    for name in examples:
        assert client.execute_command("CLUSTER", "KEYSLOT", name) == key_slot(name)


@needs_redis_server
@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_keys_of_one_record_share_a_hash_slot(
    settings: Any, cluster_node: RedisServer, prefix: str
) -> None:
    store = use_cache(settings, "own", cluster_node.cache() | {"KEY_PREFIX": prefix})
    client = cluster_node.client()
    for scope, key in AWKWARD_KEYS:
        keys = store.keys(scope, key)
        names = [keys.record, keys.dirty, keys.seq]
        # the server's own answer, in cluster mode
        slots = {client.execute_command("CLUSTER", "KEYSLOT", name) for name in names}
        assert len(slots) == 1, (prefix, scope, key, names)
        assert slots == {key_slot(keys.record.encode())}


@needs_redis_server
@pytest.mark.django_db(transaction=True)
def test_every_operation_runs_on_a_cluster_node_without_crossslot(
    settings: Any, cluster_node: RedisServer
) -> None:
    use_cache(settings, "own", cluster_node.cache() | {"KEY_PREFIX": "{tenant}:shop"})
    settings.ONCEONLY_AFTER_LEASE = "hold"
    for scope, key in AWKWARD_KEYS:
        with check_lock(key, scope=scope) as lock:
            assert lock.locked
            lock.extend(60)
            lock.complete({"key": key})
        duplicate = check_lock(key, scope=scope)
        assert duplicate.duplicate
        assert duplicate.result == {"key": key}
        check_lock(f"{key}-released", scope=scope).release()
        check_lock(f"{key}-failed", scope=scope).fail("no")
        check_lock(f"{key}-held", scope=scope, lease=0.001)
        time.sleep(0.005)
        assert check_lock(f"{key}-held", scope=scope).record_status == "unknown"
        assert get_store().force_release(scope, f"{key}-failed")

    report = sync_audit()

    assert report.copied == 2 * len(AWKWARD_KEYS)
    assert IdempotencyRecord.objects.filter(status="completed").count() == len(AWKWARD_KEYS)
    assert IdempotencyRecord.objects.filter(status="unknown").count() == len(AWKWARD_KEYS)


@needs_redis_server
def test_an_empty_hash_tag_in_the_prefix_is_refused(
    settings: Any, cluster_node: RedisServer
) -> None:
    # "{}" makes Redis hash the whole key: a record and its shard's keys would split.
    store = use_cache(settings, "own", cluster_node.cache() | {"KEY_PREFIX": "{}"})

    with pytest.raises(ImproperlyConfigured, match="different Redis Cluster slots"):
        store.keys("", "k")


@pytest.fixture
def two_caches(settings: Any) -> Iterator[dict[str, dict[str, Any]]]:
    base = settings.CACHES[settings.REDIS_TEST_CACHE]
    entries = {
        "app-a": {**base, "KEY_PREFIX": f"{settings.REDIS_TEST_PREFIX}-a"},
        "app-b": {**base, "KEY_PREFIX": f"{settings.REDIS_TEST_PREFIX}-b"},
        "app-a-v2": {**base, "KEY_PREFIX": f"{settings.REDIS_TEST_PREFIX}-a", "VERSION": 2},
    }
    settings.CACHES = {**settings.CACHES, **entries}
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    delete_redis_test_keys()
    yield entries
    delete_redis_test_keys()


@pytest.mark.services("redis")
@pytest.mark.parametrize("other", ["app-b", "app-a-v2"], ids=["prefix", "version"])
def test_caches_with_another_prefix_or_version_keep_separate_records(
    settings: Any, two_caches: dict[str, dict[str, Any]], other: str
) -> None:
    settings.ONCEONLY_REDIS_CACHE = "app-a"
    check_lock("welcome_email_1").complete("sent by app a")

    settings.ONCEONLY_REDIS_CACHE = other
    assert check_lock("welcome_email_1").locked
    made = get_store().keys("", "welcome_email_1").record
    assert made.startswith(two_caches[other]["KEY_PREFIX"] + ":")

    settings.ONCEONLY_REDIS_CACHE = "app-a"
    assert check_lock("welcome_email_1").result == "sent by app a"
