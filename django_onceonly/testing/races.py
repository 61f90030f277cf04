"""Races: of any number of concurrent claims on one key, exactly one is ``locked``.

Each trial races fresh callers for one key, in threads (each with its own database
connection) or in separate processes, released together by a barrier. The racers are
started once and loop over the trials, so hundreds of trials stay quick; the barrier
makes every trial a real race. Stale leases and expired records are raced as well:
taking them over is a second, conditional write that must also have a single winner.
So is an operator's release against a claim taking the key over.

Subclass :class:`RaceContract` like :class:`~django_onceonly.testing.contract.StoreContract`
(``race_trials`` sets the rounds per race). Processes are forked: the store must be
usable in a child after ``fork`` (open its connections lazily, per process).
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import pytest
from django.db import connections
from django.utils import timezone

from django_onceonly import check_lock
from django_onceonly.locks import Lock
from django_onceonly.signals import lease_expired
from django_onceonly.stores.database import close_connections

from .contract import StoreTestCase, StoreUnderTest

__all__ = ["RaceContract", "race_in_processes", "race_in_threads"]

THREADS = 16
PROCESSES = 4
BARRIER_TIMEOUT = 60.0


class Outcome(NamedTuple):
    trial: int
    status: str  # "locked", "duplicate", or "error: ..." when check_lock raised
    token: str | None
    lease_actions: tuple[str, ...]  # lease_expired signals this claim sent


_seen = threading.local()


def _remember_lease_action(sender: Any, lock: Any, action: str, **kwargs: Any) -> None:
    # Signals are sent in the claiming thread: a thread-local tells whose claim it was.
    actions: list[str] | None = getattr(_seen, "actions", None)
    if actions is not None:
        actions.append(action)


def _claim_each(keys: Sequence[str], barrier: Any) -> Iterator[Outcome]:
    """Claim every key in turn, each claim released together with the other racers'."""
    for trial, key in enumerate(keys):
        barrier.wait(BARRIER_TIMEOUT)
        _seen.actions = []
        try:
            lock = check_lock(key)
        except Exception as exc:
            yield Outcome(trial, f"error: {exc!r}", None, ())
        else:
            yield Outcome(trial, lock.status, lock.token, tuple(_seen.actions))
        finally:
            _seen.actions = None


def _close_all() -> None:
    # Each racer's connections must be closed, or the test database cannot be dropped.
    connections.close_all()
    close_connections()


def race_in_threads(keys: Sequence[str], racers: int = THREADS) -> list[list[Outcome]]:
    """Race ``racers`` threads for each key; return the outcomes per trial."""
    barrier = threading.Barrier(racers)
    results: list[list[Outcome]] = [[] for _ in keys]
    guard = threading.Lock()
    crashes: list[BaseException] = []

    def racer() -> None:
        try:
            for outcome in _claim_each(keys, barrier):
                with guard:
                    results[outcome.trial].append(outcome)
        except BaseException as exc:  # a broken barrier: the other racers stop too
            barrier.abort()
            crashes.append(exc)
        finally:
            _close_all()

    threads = [threading.Thread(target=racer, name=f"racer-{n}") for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not crashes, f"racer threads crashed: {crashes!r}"
    return results


def _process_racer(keys: Sequence[str], barrier: Any, outcomes: Any) -> None:
    try:
        for outcome in _claim_each(keys, barrier):
            outcomes.put(outcome)
    except BaseException as exc:
        barrier.abort()
        outcomes.put(Outcome(-1, f"crash: {exc!r}", None, ()))
    finally:
        _close_all()
        outcomes.put(None)  # this racer is done


def race_in_processes(keys: Sequence[str], racers: int = PROCESSES) -> list[list[Outcome]]:
    """Race ``racers`` forked processes for each key; return the outcomes per trial."""
    # A forked child must not share the parent's sockets: close them before forking.
    _close_all()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(racers)
    outcomes = context.Queue()
    processes = [
        context.Process(target=_process_racer, args=(keys, barrier, outcomes))
        for _ in range(racers)
    ]
    for process in processes:
        process.start()
    results: list[list[Outcome]] = [[] for _ in keys]
    crashes: list[str] = []
    running = racers
    try:
        while running:
            try:
                outcome = outcomes.get(timeout=BARRIER_TIMEOUT * 2)
            except queue_module.Empty:
                crashes.append("no outcome for too long")
                break
            if outcome is None:
                running -= 1
            elif outcome.trial < 0:
                crashes.append(outcome.status)
            else:
                results[outcome.trial].append(outcome)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    assert not crashes, f"racer processes crashed: {crashes!r}"
    assert all(process.exitcode == 0 for process in processes)
    return results


RACES: dict[str, tuple[Callable[[Sequence[str]], list[list[Outcome]]], int, str]] = {
    "threads": (race_in_threads, THREADS, "threads"),
    "processes": (race_in_processes, PROCESSES, "processes"),
}


def fresh_keys(count: int, label: str) -> list[str]:
    run = uuid.uuid4().hex[:12]
    return [f"race-{label}-{run}-{trial}" for trial in range(count)]


def stale_leases(count: int) -> list[str]:
    """``count`` keys, each claimed and left in progress with a lease that has ended."""
    keys = fresh_keys(count, "stale")
    for key in keys:
        assert check_lock(key, lease=0.001).locked
    time.sleep(0.05)
    return keys


def expired_records(count: int) -> list[str]:
    """``count`` keys, each completed with a TTL that has run out."""
    keys = fresh_keys(count, "expired")
    for key in keys:
        with check_lock(key, ttl=0.001) as lock:
            lock.complete("first")
    time.sleep(0.05)
    return keys


def report(
    onceonly_store: StoreUnderTest,
    how: str,
    results: list[list[Outcome]],
    racers: int,
    unit: str,
    *,
    winners: int = 1,
) -> None:
    """Print the trial counts, then fail on any claim that raised."""
    good = sum(1 for trial in results if [o.status for o in trial].count("locked") == winners)
    wanted = "exactly one winner" if winners == 1 else "no winner"
    print(
        f"\n{onceonly_store.name} {how}: {len(results)} trials x {racers} {unit}, {good} with {wanted}"
    )
    errors = [o for trial in results for o in trial if o.status not in ("locked", "duplicate")]
    assert not errors, f"claims raised: {errors[:5]!r}"
    assert all(len(trial) == racers for trial in results)


def assert_one_winner(
    onceonly_store: StoreUnderTest, keys: Sequence[str], results: list[list[Outcome]]
) -> None:
    for key, trial in zip(keys, results, strict=True):
        statuses = sorted(outcome.status for outcome in trial)
        assert statuses == ["duplicate"] * (len(trial) - 1) + ["locked"], (key, statuses)
        (winner,) = [outcome for outcome in trial if outcome.status == "locked"]
        record = onceonly_store.record(key)
        assert record is not None
        assert record.status == "in_progress"
        assert record.owner_token == winner.token
        # Every loser was counted, once (record() writes the buffered counts first).
        assert record.duplicates_blocked == len(trial) - 1, (key, record)


class RaceContract(StoreTestCase):
    """Races on the store under test, each trial printing how many rounds it ran."""

    @pytest.fixture(autouse=True)
    def _watch_lease_signals(self) -> Iterator[None]:
        lease_expired.connect(_remember_lease_action, dispatch_uid="onceonly_races")
        yield
        lease_expired.disconnect(dispatch_uid="onceonly_races")

    @pytest.mark.parametrize("how", ["threads", "processes"])
    def test_exactly_one_racer_locks_a_fresh_key(
        self, onceonly_store: StoreUnderTest, how: str
    ) -> None:
        race, racers, unit = RACES[how]
        keys = fresh_keys(onceonly_store.race_trials, how)

        results = race(keys)

        report(onceonly_store, f"{how}, fresh key", results, racers, unit)
        assert_one_winner(onceonly_store, keys, results)

    @pytest.mark.parametrize("how", ["threads", "processes"])
    def test_exactly_one_racer_reclaims_a_stale_lease(
        self, onceonly_store: StoreUnderTest, how: str, settings: Any
    ) -> None:
        settings.ONCEONLY_AFTER_LEASE = "reclaim"
        race, racers, unit = RACES[how]
        keys = stale_leases(onceonly_store.race_trials)

        results = race(keys)

        report(onceonly_store, f"{how}, stale lease (reclaim)", results, racers, unit)
        assert_one_winner(onceonly_store, keys, results)
        for trial in results:
            # Only the winner took the stale lease over; the others saw its new claim.
            actions = sorted(action for outcome in trial for action in outcome.lease_actions)
            assert actions == ["reclaimed"]
            assert [o.lease_actions for o in trial if o.status == "locked"] == [("reclaimed",)]

    @pytest.mark.parametrize("how", ["threads", "processes"])
    def test_nobody_locks_a_stale_lease_on_hold(
        self, onceonly_store: StoreUnderTest, how: str, settings: Any
    ) -> None:
        settings.ONCEONLY_AFTER_LEASE = "hold"
        race, racers, unit = RACES[how]
        keys = stale_leases(onceonly_store.race_trials)

        results = race(keys)

        report(onceonly_store, f"{how}, stale lease (hold)", results, racers, unit, winners=0)
        for key, trial in zip(keys, results, strict=True):
            assert [o.status for o in trial] == ["duplicate"] * racers, key
            # Exactly one racer turned the record unknown; the others saw it unknown.
            actions = sorted(action for outcome in trial for action in outcome.lease_actions)
            assert actions == ["held"], (key, actions)
            record = onceonly_store.record(key)
            assert record is not None
            assert record.status == "unknown"
            assert record.duplicates_blocked == racers

    def test_exactly_one_thread_takes_over_an_expired_record(
        self, onceonly_store: StoreUnderTest
    ) -> None:
        keys = expired_records(onceonly_store.race_trials)

        results = race_in_threads(keys)

        report(onceonly_store, "threads, expired record", results, THREADS, "threads")
        assert_one_winner(onceonly_store, keys, results)
        for key in keys:
            record = onceonly_store.record(key)
            assert record is not None
            assert record.result is None  # the expired outcome is gone with its record

    def test_release_racing_a_takeover_never_loses_the_new_claim(
        self, onceonly_store: StoreUnderTest, settings: Any
    ) -> None:
        # Each trial races an operator's release of a stale claim (release_if_unchanged,
        # the admin's action) against a claim taking it over. Whichever lands first, the
        # claim is acquired and its record must survive: a check-then-delete fails this.
        settings.ONCEONLY_AFTER_LEASE = "reclaim"
        trials = onceonly_store.race_trials
        keys = fresh_keys(trials, "release")
        for key in keys:
            assert check_lock(key, lease=0.001).locked
        time.sleep(0.05)
        seen = [onceonly_store.record(key) for key in keys]
        store = onceonly_store.store
        barrier = threading.Barrier(2)
        released: list[bool] = []
        claims: list[Lock] = []
        crashes: list[BaseException] = []

        def operator() -> None:
            try:
                for key, record in zip(keys, seen, strict=True):
                    assert record is not None
                    barrier.wait(BARRIER_TIMEOUT)
                    released.append(
                        store.release_if_unchanged(
                            "",
                            key,
                            owner_token=record.owner_token,
                            status=record.status,
                            allow_live=False,
                            now=timezone.now(),
                        )
                    )
            except BaseException as exc:
                barrier.abort()
                crashes.append(exc)
            finally:
                _close_all()

        def claimer() -> None:
            try:
                for key in keys:
                    barrier.wait(BARRIER_TIMEOUT)
                    claims.append(check_lock(key, lease=60))
            except BaseException as exc:
                barrier.abort()
                crashes.append(exc)
            finally:
                _close_all()

        threads = [threading.Thread(target=operator), threading.Thread(target=claimer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert not crashes, crashes
        print(
            f"\n{onceonly_store.name}: {trials} trials of a release racing a takeover, "
            f"{sum(released)} released before the claim, {trials - sum(released)} found it taken"
        )
        for key, claim in zip(keys, claims, strict=True):
            assert claim.locked, key
            record = onceonly_store.record(key)
            assert record is not None, f"{key}: the new claim's record was released"
            assert record.owner_token == claim.token
