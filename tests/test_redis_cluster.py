"""RedisStore on a real Redis Cluster: three masters, three replicas, six redis-servers.

The cluster is the session's own (``tests/redis_cluster.py``), reached through
``django_onceonly.stores.redis_cluster.ClusterClient``. On it: the store contract and
the races, the audit sync and the admin for records spread over every master, cluster
errors surfacing as ``StoreUnavailable`` (a slot with no master, a slot moved between
masters), a master SIGKILLed during a claim load (what is lost, and that the other
masters never fail), and ``bench/cluster.py`` run small.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client
from django.urls import reverse
from redis.crc import key_slot
from redis.exceptions import ClusterError

from django_onceonly import StoreUnavailable, check_lock, check_locks
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import RedisStore, get_store
from django_onceonly.stores.audit import sync_audit
from django_onceonly.stores.base import TakenKeys
from django_onceonly.stores.database import close_connections
from django_onceonly.testing.contract import StoreContract, StoreUnderTest
from django_onceonly.testing.races import RaceContract
from tests.redis_cluster import OwnCluster, missing
from tests.services import IN_CI
from tests.test_admin_redis import CHANGELIST, RELEASE, confirmation, messages_of

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "cluster"
PREFIX = f"{django_settings.REDIS_TEST_PREFIX}-cluster"
# A record acknowledged by a master can be missing after its failover only if the master
# died before its replica received it: asynchronous replication on loopback lags by
# milliseconds, so anything older than this before the SIGKILL must have survived.
LOSS_WINDOW = 1.0  # seconds

pytestmark = pytest.mark.django_db(transaction=True)


def use_cluster(settings: Any, cluster: OwnCluster) -> RedisStore:
    settings.CACHES = {**settings.CACHES, ALIAS: cluster.cache(PREFIX)}
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = ALIAS
    settings.ONCEONLY_DATABASE = "default"
    store = get_store()
    assert isinstance(store, RedisStore)
    return store


@pytest.fixture
def cluster_store(settings: Any, redis_cluster: OwnCluster) -> Iterator[RedisStore]:
    store = use_cluster(settings, redis_cluster)
    redis_cluster.delete_keys(PREFIX)
    yield store
    redis_cluster.delete_keys(PREFIX)


class TestStoreContractOnCluster(StoreContract, RaceContract):
    @pytest.fixture
    def onceonly_store(self, cluster_store: RedisStore) -> StoreUnderTest:
        return StoreUnderTest(name="redis-cluster", race_trials=60)


def master_port(cluster: OwnCluster, store: RedisStore, key: str) -> int:
    return cluster.master_of(key_slot(store.keys("", key).record.encode()))


def keys_on_every_master(cluster: OwnCluster, store: RedisStore, label: str) -> list[str]:
    """One key whose record lives on each master."""
    chosen: dict[int, str] = {}
    for n in range(1000):
        chosen.setdefault(master_port(cluster, store, f"{label}-{n}"), f"{label}-{n}")
        if len(chosen) == cluster.masters:
            return sorted(chosen.values())
    raise AssertionError("no key found for some master")


def test_the_audit_sync_copies_records_from_every_master(
    redis_cluster: OwnCluster, cluster_store: RedisStore
) -> None:
    keys = [f"audit-{n}" for n in range(600)]  # every one of the 256 shards, most twice
    locks = check_locks(keys)
    for lock in locks[::2]:
        lock.complete({"sent": lock.key})

    report = sync_audit(store=cluster_store)

    per_master = redis_cluster.keys_per_master(PREFIX)
    assert len(per_master) == 3
    assert min(per_master.values()) > 100, per_master
    assert report.copied == 600
    assert report.pending == 0
    rows = dict(IdempotencyRecord.objects.values_list("key", "status"))
    assert rows == {key: "completed" if n % 2 == 0 else "in_progress" for n, key in enumerate(keys)}
    assert sync_audit(store=cluster_store).copied == 0  # every mark, on every master, removed

    for lock in locks[1::2]:
        lock.release()
    assert sync_audit(store=cluster_store).deleted == 300
    assert IdempotencyRecord.objects.count() == 300


def test_the_admin_lists_and_releases_records_of_every_master(
    redis_cluster: OwnCluster, cluster_store: RedisStore, admin_client: Client
) -> None:
    keys = keys_on_every_master(redis_cluster, cluster_store, "admin")
    for key in keys:
        check_lock(key).fail(TimeoutError("provider"), outcome_unknown=True)
    sync_audit(store=cluster_store)

    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert all(key in html for key in keys)

    form: dict[str, Any] = {"ids": []}
    for record in IdempotencyRecord.objects.filter(key__in=keys):
        one = confirmation(admin_client, record)
        form = {**form, **one, "ids": [*form["ids"], *one["ids"]]}
    done = admin_client.post(reverse(RELEASE), form, follow=True)

    assert "Released 3 intents" in messages_of(done)
    assert [cluster_store.get("", key) for key in keys] == [None, None, None]
    assert not IdempotencyRecord.objects.filter(key__in=keys).exists()


def test_one_startup_node_is_enough_to_reach_every_master(
    settings: Any, redis_cluster: OwnCluster, cluster_store: RedisStore
) -> None:
    # As with a managed service's configuration endpoint: here, a replica's address.
    replica = next(info.port for info in redis_cluster.topology() if not info.master)
    entry = redis_cluster.cache(PREFIX)
    settings.CACHES = {
        **settings.CACHES,
        ALIAS: {**entry, "LOCATION": f"redis://127.0.0.1:{replica}"},
    }
    keys = keys_on_every_master(redis_cluster, cluster_store, "startup")

    assert all(check_lock(key).locked for key in keys)
    assert all(check_lock(key).duplicate for key in keys)


def test_a_slot_without_a_master_is_store_unavailable_and_the_others_work(
    redis_cluster: OwnCluster, cluster_store: RedisStore
) -> None:
    # DELSLOTS on the master makes it answer CLUSTERDOWN for that slot (redis-py:
    # ClusterDownError, a ResponseError whose text no longer starts with CLUSTERDOWN).
    down, up = keys_on_every_master(redis_cluster, cluster_store, "slot")[:2]
    slot = key_slot(cluster_store.keys("", down).record.encode())
    master = next(n for n in redis_cluster.nodes if n.port == redis_cluster.master_of(slot))
    master.client().execute_command("CLUSTER", "DELSLOTS", slot)
    try:
        with pytest.raises(StoreUnavailable, match="unavailable"):
            check_lock(down)
        with pytest.raises(StoreUnavailable, match="unavailable"):
            check_locks([down, up])
        # The batch failed as a whole: the claim another master granted was given back.
        assert check_lock(up).locked
    finally:
        master.client().execute_command("CLUSTER", "ADDSLOTS", slot)
        redis_cluster.wait_ok()
    assert check_lock(down).locked


def keys_in_shard(store: RedisStore, shard: str, count: int, label: str) -> list[str]:
    """``count`` keys whose records are in ``shard`` (so in one slot, with its marks)."""
    keys = []
    n = 0
    while len(keys) < count:
        n += 1
        if store.keys("", f"{label}-{n}").shard == shard:
            keys.append(f"{label}-{n}")
    return keys


def test_a_slot_moved_between_masters_keeps_its_records_and_fails_only_as_unavailable(
    redis_cluster: OwnCluster, cluster_store: RedisStore
) -> None:
    # A resharding (scaling a managed cluster out does this): the slot of one shard moves
    # from one master to another, its keys in two steps. In between, the shard's keys
    # are split between the masters and a script on them gets TRYAGAIN (after redis-py
    # followed the ASK redirection); after it, MOVED sends the client to the new master.
    shard = "5e"
    existing = keys_in_shard(cluster_store, shard, 6, "reshard")
    for key in existing:
        check_lock(key).complete({"sent": key})
    fresh = keys_in_shard(cluster_store, shard, 8, "reshard-new")[len(existing) :]
    slot = key_slot(cluster_store.shard_keys(shard)[0].encode())
    topology = {info.port: info for info in redis_cluster.topology()}
    source = next(n for n in redis_cluster.nodes if n.port == redis_cluster.master_of(slot))
    target = next(n for n in redis_cluster.master_nodes() if n.port != source.port)
    source_id, target_id = topology[source.port].node_id, topology[target.port].node_id
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)

    def migrate(names: list[str]) -> None:
        source.client().execute_command(
            "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names
        )

    migrate(list(cluster_store.shard_keys(shard)))  # the marks first, the records after
    # A duplicate check on a key this process has seen taken reads only the record (one
    # HMGET), still on the source: it answers. A script needs the record and the marks,
    # now on two masters: a process that has not seen the key gets StoreUnavailable.
    assert check_lock(existing[0]).result == {"sent": existing[0]}
    cluster_store._taken = TakenKeys()
    with pytest.raises(StoreUnavailable, match="unavailable") as duplicate:
        check_lock(existing[1])
    with pytest.raises(StoreUnavailable, match="unavailable") as new:
        check_lock(fresh[0])
    # redis-py retried the TRYAGAIN replies until its redirection budget ran out.
    assert isinstance(duplicate.value.__cause__, ClusterError)
    assert isinstance(new.value.__cause__, ClusterError)

    remaining = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    migrate(remaining)
    for node in (
        target,
        source,
        *(n for n in redis_cluster.master_nodes() if n not in (source, target)),
    ):
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    redis_cluster.wait_ok()

    assert redis_cluster.master_of(slot) == target.port
    assert [check_lock(key).result for key in existing] == [{"sent": key} for key in existing]
    assert check_lock(fresh[0]).locked
    assert check_lock(fresh[1]).locked
    report = sync_audit(store=cluster_store)
    assert report.damaged == 0
    assert set(IdempotencyRecord.objects.values_list("key", flat=True)) == {*existing, *fresh[:2]}


# -- a master killed during a claim load --------------------------------------------------


def _claimer(index: int, stop: Any, out: str) -> None:
    """Claim new keys until told to stop; write what each claim answered."""
    answers: list[tuple[str, str, float]] = []
    n = 0
    while not stop.is_set():
        key = f"load-{index}-{n}"
        n += 1
        try:
            answer = check_lock(key).status
        except StoreUnavailable:
            answer = "unavailable"
        except Exception as exc:  # reported, and failed on by the test
            answer = f"raw {type(exc).__module__}.{type(exc).__name__}: {exc}"
        answers.append((key, answer, time.time()))
    Path(out).write_text(json.dumps(answers))


@pytest.mark.slow
def test_a_failover_under_load_loses_only_the_dead_masters_last_writes(
    redis_cluster: OwnCluster, cluster_store: RedisStore, tmp_path: Path
) -> None:
    processes = 3
    slot_master = {
        slot: info.port
        for info in redis_cluster.topology()
        if info.master
        for start, end in info.slots
        for slot in range(start, end + 1)
    }
    victim = redis_cluster.master_nodes()[0]
    connections.close_all()
    close_connections()
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    outs = [str(tmp_path / f"claimer-{n}.json") for n in range(processes)]
    workers = [context.Process(target=_claimer, args=(n, stop, outs[n])) for n in range(processes)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.5)
        killed_at = time.time()
        redis_cluster.kill(victim)
        recovery = redis_cluster.wait_ok(60)
        recovered_at = killed_at + recovery
        time.sleep(1.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        try:
            victim.start()  # back as a replica of the master that replaced it
            redis_cluster.wait_ok(60)
        except Exception:  # the cluster must not be left half-broken for later tests
            redis_cluster.stop()
            raise
    assert all(worker.exitcode == 0 for worker in workers)

    answers = [tuple(row) for out in outs for row in json.loads(Path(out).read_text())]
    on_victim = {
        key
        for key, _, _ in answers
        if slot_master[key_slot(cluster_store.keys("", key).record.encode())] == victim.port
    }
    acquired = [(key, at) for key, answer, at in answers if answer == "locked"]
    errors = [(key, answer, at) for key, answer, at in answers if answer != "locked"]
    lost = [(key, at) for key, at in acquired if cluster_store.get("", key) is None]
    after_recovery = [key for key, at in acquired if key in on_victim and at > recovered_at]
    before = sum(1 for _, at in acquired if at < killed_at)
    first = min(at for _, _, at in answers)
    print(
        f"\nfailover under load: {processes} processes, {len(answers)} claims "
        f"(the first {killed_at - first:.2f} s before the kill, {before} acknowledged by then), "
        f"{len(acquired)} acknowledged ({sum(k in on_victim for k, _ in acquired)} on the "
        f"killed master's slots), {len(errors)} StoreUnavailable (all on its slots: "
        f"{all(k in on_victim for k, _, _ in errors)}; the last "
        f"{max((at - killed_at for _, _, at in errors), default=0):.2f} s after the kill), "
        f"{len(lost)} lost "
        f"(acknowledged at most {max((killed_at - at for _, at in lost), default=0):.3f} s "
        f"before the kill), recovered (replica promoted, cluster_state:ok) in "
        f"{recovery:.2f} s, {len(after_recovery)} acknowledged on the new master after"
    )
    assert not [e for e in errors if e[1] != "unavailable"], "a raw redis error escaped"
    assert all(key in on_victim for key, _, _ in errors), "a surviving master failed a claim"
    assert all(killed_at <= at for _, _, at in errors)
    assert all(key in on_victim for key, _ in lost)
    assert all(killed_at - LOSS_WINDOW <= at <= killed_at for _, at in lost), lost
    assert len(acquired) > 300, "too little load to mean anything"
    assert after_recovery, "the new master took no claim"


# -- bench/cluster.py, small --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(bool(missing()) and not IN_CI, reason=missing() or "-")
def test_bench_cluster_prints_throughput_with_one_and_three_masters(tmp_path: Path) -> None:
    command = [
        sys.executable, "bench/cluster.py",
        "--processes", "2", "--seconds", "1", "--rounds", "1", "--dir", str(tmp_path),
    ]  # fmt: skip

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in done.stdout.splitlines()
        )
        if cells[0] in ("1 master", "3 masters")
    }
    assert set(rows) == {"1 master", "3 masters"}
    assert all(float(cells[0].replace(",", "")) > 0 for cells in rows.values())
    assert "ratio 3/1:" in done.stdout
