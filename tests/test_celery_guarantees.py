"""The seven guarantees of ``OnceTask`` (SPEC, "Celery"), each with a real worker.

The worker is a separate ``celery worker -P prefork -c 2`` process on the Redis broker,
writing records to the PostgreSQL test database (``tests/celery/fixtures.py``). Side
effects are counted in files the task bodies append to (``tests/celery/app.py``), never
through return values; return values are only compared between AsyncResults.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import uuid
from decimal import Decimal
from typing import Any

import pytest
from celery import chain, chord, group

from django_onceonly import IntentBlocked, InvalidResult, ResultTooLarge
from django_onceonly.celery import HEADER_FINISH, HEADER_KEY, HEADER_SCOPE
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import duplicates, get_store
from django_onceonly.stores.base import Record
from tests.celery.app import TEST_SETTINGS_HEADER
from tests.celery.fixtures import Running, TcpProxy, counted_record, wait_until

pytestmark = [
    pytest.mark.services("redis", "postgres"),
    pytest.mark.django_db(transaction=True, databases=["default", "postgres"]),
    pytest.mark.usefixtures("pg_records"),
    pytest.mark.slow,
]

RESULT_TIMEOUT = 45


def new_tag() -> str:
    return uuid.uuid4().hex[:16]


def record(key: str) -> Record | None:
    duplicates.flush()  # the duplicate counts this process holds
    return get_store().get("", key)


def with_settings(**values: Any) -> dict[str, Any]:
    return {"headers": {TEST_SETTINGS_HEADER: values}}


# -- 1. two messages for one intent ------------------------------------------------------


def test_second_message_while_first_runs_waits_and_returns_first_result(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    first = tasks.send.delay(tag, sleep=1.5)
    wait_until(lambda: env.count(tag, "start"), "the first run to start")
    second = tasks.send.delay(tag)

    assert second.get(timeout=RESULT_TIMEOUT) == first.get(timeout=RESULT_TIMEOUT)
    assert env.count(tag, "start") == 1
    assert env.count(tag, "sent") == 1
    # The second message really ran (and waited) rather than being dropped.
    attempts = env.effects_of(tag, "attempt")
    assert {a["task_id"] for a in attempts} == {first.id, second.id}
    stored = record(f"send-{tag}")
    assert stored is not None
    assert stored.status == "completed"
    assert stored.result == first.get()
    assert stored.task_id == first.id


def test_message_after_completion_returns_the_stored_result(redis_worker: Running) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()
    first = tasks.send.delay(tag).get(timeout=RESULT_TIMEOUT)

    later = [tasks.send.delay(tag, value="ignored") for _ in range(3)]

    assert [result.get(timeout=RESULT_TIMEOUT) for result in later] == [first] * 3
    assert env.count(tag, "sent") == 1
    assert env.count(tag, "attempt") == 4
    stored = counted_record(f"send-{tag}", 3)  # blocked in the worker
    assert stored is not None
    assert stored.duplicates_blocked == 3


def test_simultaneous_messages_for_one_intent_run_the_body_once(redis_worker: Running) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    trials = 6
    tags = [new_tag() for _ in range(trials)]

    # Four messages per intent, sent back to back: both pool processes race for each.
    sent = {tag: [tasks.send.delay(tag, sleep=0.2) for _ in range(4)] for tag in tags}

    for tag, results in sent.items():
        values = [result.get(timeout=RESULT_TIMEOUT) for result in results]
        assert all(value == values[0] for value in values)
        assert env.count(tag, "sent") == 1
        assert env.count(tag, "attempt") >= 4
    print(f"simultaneous messages: {trials} intents x 4 messages, each body ran once")


def test_positional_and_keyword_calls_with_rich_types_are_one_intent(
    redis_worker: Running,
) -> None:
    # No once_key: the key is the task name plus a hash of the bound arguments, in the
    # form the message carries them (a Decimal, a datetime, a UUID as their JSON text).
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()
    ident = uuid.uuid4()

    when = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

    calls = [
        tasks.hashed.delay(tag, Decimal("10.50"), when, ident),
        tasks.hashed.apply_async(kwargs={"tag": tag, "amount": Decimal("10.50"), "when": when}),
        tasks.hashed.apply_async((tag,), {"when": when, "amount": Decimal("10.50"), "note": "n"}),
    ]
    # ident defaults to None in the last two: a different intent from the first.
    keys = [call.get(timeout=RESULT_TIMEOUT) for call in calls]

    assert keys[1] == keys[2]
    assert keys[0] != keys[1]
    assert keys[1].startswith("onceonly_tests.hashed:")
    assert env.count(tag, "sent") == 2

    again = tasks.hashed.apply_async((tag, Decimal("10.50"), when), {"ident": ident})
    assert again.get(timeout=RESULT_TIMEOUT) == keys[0]
    assert env.count(tag, "sent") == 2


def test_one_intent_sent_by_two_producers_runs_once(redis_worker: Running) -> None:
    # One producer calls .delay() with rich values; another (send_task by name, as a
    # service without the task's code would) sends their JSON text. Before keys were
    # derived from the wire form these were two keys and the body ran twice.
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()
    ident = uuid.uuid4()
    when = dt.datetime(2026, 3, 1, 12, 0, 30, 250000, tzinfo=dt.UTC)

    first = tasks.hashed.delay(tag, Decimal("10.50"), when, ident)
    key = first.get(timeout=RESULT_TIMEOUT)
    by_name = tasks.app.send_task(
        "onceonly_tests.hashed",
        args=[tag, "10.50", when.isoformat(), str(ident)],
        queue=tasks.queue,
    )

    assert by_name.get(timeout=RESULT_TIMEOUT) == key
    assert env.count(tag, "sent") == 1


# -- 2. retries pass their own claim -----------------------------------------------------


def test_self_retry_resumes_its_own_claim_and_the_body_completes_once(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    result = tasks.flaky.delay(tag, failures=2)

    assert result.get(timeout=RESULT_TIMEOUT) == {"tag": tag, "tries": 3}
    tries = env.effects_of(tag, "try")
    assert [t["retries"] for t in tries] == [0, 1, 2]
    # Each retry took the claim over under a token of its own (the old one is fenced).
    assert len({t["token"] for t in tries}) == 3
    assert env.count(tag, "sent") == 1
    stored = record(f"flaky-{tag}")
    assert stored is not None
    assert stored.status == "completed"
    assert stored.duplicates_blocked == 0  # no retry was ever turned away


def test_autoretry_for_resumes_its_own_claim(redis_worker: Running) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    result = tasks.auto_flaky.delay(tag, failures=2)

    assert result.get(timeout=RESULT_TIMEOUT) == {"tag": tag, "tries": 3}
    assert [t["retries"] for t in env.effects_of(tag, "try")] == [0, 1, 2]
    assert env.count(tag, "sent") == 1
    stored = record(f"auto-{tag}")
    assert stored is not None
    assert stored.status == "completed"


def test_exhausted_retries_release_the_claim_so_a_later_message_runs(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    failed = tasks.exhausted.delay(tag)
    with pytest.raises(ConnectionError):
        failed.get(timeout=RESULT_TIMEOUT)
    assert env.count(tag, "try") == 2  # the first run and its one retry
    assert record(f"exhausted-{tag}") is None  # no claim leaked

    assert tasks.exhausted.delay(tag, succeed=True).get(timeout=RESULT_TIMEOUT) == "sent"
    assert env.count(tag, "sent") == 1


def test_retry_while_a_duplicate_message_arrives_keeps_one_run(redis_worker: Running) -> None:
    # A second message for the intent arrives during the countdown of a retry: the claim
    # is held across the countdown, so the newcomer waits and gets the result.
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    first = tasks.flaky.delay(tag, failures=1)
    wait_until(lambda: env.count(tag, "try"), "the first try")
    second = tasks.flaky.delay(tag, failures=0)

    assert second.get(timeout=RESULT_TIMEOUT) == first.get(timeout=RESULT_TIMEOUT)
    assert env.count(tag, "sent") == 1
    assert [t["retries"] for t in env.effects_of(tag, "try")] == [0, 1]


# -- 3. redelivery of a message whose first run is alive ---------------------------------


def test_redelivered_message_does_not_run_the_body_again(
    redis_redelivery_worker: Running,
) -> None:
    # acks_late and a 2 s visibility timeout: the broker hands the unacknowledged
    # message out again while its first run (6 s) is still going.
    tasks, env = redis_redelivery_worker.tasks, redis_redelivery_worker.env
    tag = new_tag()

    result = tasks.send.delay(tag, sleep=6)

    value = result.get(timeout=RESULT_TIMEOUT)
    attempts = [a for a in env.effects_of(tag, "attempt") if a["task_id"] == result.id]
    redelivered = [a for a in attempts if a["redelivered"]]
    print(f"redelivery: {len(attempts)} executions of one message, {len(redelivered)} redelivered")
    assert redelivered, "the broker did not redeliver the message; the test proves nothing"
    assert env.count(tag, "start") == 1
    assert env.count(tag, "sent") == 1
    assert value["run"] == env.effects_of(tag, "sent")[0]["run"]
    stored = counted_record(f"send-{tag}", 1)  # blocked in the worker
    assert stored is not None
    assert stored.status == "completed"
    assert stored.duplicates_blocked >= 1


# -- 4. a worker killed mid-run ----------------------------------------------------------


def _kill_first_run(env: Any, tag: str) -> int:
    start = wait_until(lambda: env.effects_of(tag, "start"), "the first run to start")
    pid = int(start[0]["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


def test_sigkilled_run_is_reclaimed_after_its_lease(redis_worker: Running) -> None:
    # reject_on_worker_lost: the broker gets the message back at once; the new execution
    # finds the dead run's claim, waits out its lease (3 s), reclaims it and completes.
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    result = tasks.crashy.delay(tag)
    killed = _kill_first_run(env, tag)

    assert result.get(timeout=RESULT_TIMEOUT) == "sent"
    starts = env.effects_of(tag, "start")
    assert len(starts) == 2  # at least once: the killed run may have acted
    assert starts[0]["pid"] == killed
    assert env.count(tag, "sent") == 1
    stored = record(f"crashy-{tag}")
    assert stored is not None
    assert stored.status == "completed"


def test_sigkilled_run_with_hold_turns_unknown_and_is_not_run_again(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    result = tasks.crashy.apply_async((tag,), **with_settings(ONCEONLY_AFTER_LEASE="hold"))
    _kill_first_run(env, tag)

    wait_until(lambda: result.state == "FAILURE", "the redelivered run to give up")
    assert isinstance(result.result, IntentBlocked)
    assert result.result.record_status == "unknown"
    stored = record(f"crashy-{tag}")
    assert stored is not None
    assert stored.status == "unknown"  # never lost silently: a person decides
    assert env.count(tag, "start") == 1
    assert env.count(tag, "sent") == 0

    # Released by an operator, the intent runs again.
    assert get_store().force_release("", f"crashy-{tag}")
    assert tasks.crashy.delay(tag).get(timeout=RESULT_TIMEOUT) == "sent"
    assert env.count(tag, "sent") == 1


def test_hard_time_limit_sets_the_lease_and_the_intent_is_reclaimed_after_it(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    first = tasks.limited.delay(tag)  # time_limit=2, no once_lease
    wait_until(lambda: env.count(tag, "start"), "the first run to start")
    claimed = record(f"limited-{tag}")
    assert claimed is not None
    assert claimed.lease_expires_at is not None
    assert claimed.created_at is not None
    # Two seconds of hard limit plus the minimum margin of five.
    assert (claimed.lease_expires_at - claimed.created_at).total_seconds() == pytest.approx(7)

    wait_until(lambda: first.state == "FAILURE", "the hard time limit to kill the run")
    assert "TimeLimitExceeded" in repr(first.result)
    still = record(f"limited-{tag}")
    assert still is not None
    assert still.status == "in_progress"  # the kill left the claim to its lease

    second = tasks.limited.delay(tag)
    assert second.get(timeout=RESULT_TIMEOUT) == "sent"
    assert env.count(tag, "start") == 2
    assert env.count(tag, "sent") == 1


# -- 5. a result that cannot be stored ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error"),
    [("set", InvalidResult), ("huge", ResultTooLarge)],
)
def test_result_that_cannot_be_stored_fails_the_task_and_frees_the_claim(
    redis_worker: Running, kind: str, error: type[Exception]
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    result = tasks.unstorable.delay(tag, kind)

    wait_until(lambda: result.state == "FAILURE", "the task to fail")
    assert isinstance(result.result, error)
    assert env.count(tag, "sent") == 1
    assert record(f"bad-{tag}") is None


# -- 6. store down -----------------------------------------------------------------------


def test_store_down_runs_nothing_and_the_task_retries_until_it_is_back(
    redis_worker: Running,
) -> None:
    # This message's store is the test database behind a proxy that is closed (nothing
    # listens: connections are refused), then opened.
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()
    proxy = TcpProxy(env.outage_port, ("127.0.0.1", 5432))

    result = tasks.send.apply_async((tag,), **with_settings(ONCEONLY_DATABASE="outage"))
    try:
        wait_until(lambda: env.count(tag, "attempt") >= 2, "two attempts against the dead store")
        assert result.state == "RETRY"
        assert env.count(tag, "start") == 0
        proxy.open()
        value = result.get(timeout=RESULT_TIMEOUT)
    finally:
        proxy.close()

    assert env.count(tag, "sent") == 1
    stored = record(f"send-{tag}")
    assert stored is not None
    assert stored.status == "completed"
    assert stored.result == value
    assert "StoreUnavailable" in redis_worker.worker.log_text()


def test_store_down_when_the_body_returns_stores_the_outcome_from_a_message_once_it_is_back(
    redis_worker: Running,
) -> None:
    # The claim goes through the proxy; the proxy is cut while the body runs, so the
    # outcome cannot be stored when it returns. It must not stay in progress forever,
    # and the body must not run again.
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()
    proxy = TcpProxy(env.outage_port, ("127.0.0.1", 5432))
    proxy.open()
    try:
        result = tasks.send.apply_async(
            (tag,), {"sleep": 1.0}, **with_settings(ONCEONLY_DATABASE="outage")
        )
        wait_until(lambda: env.count(tag, "start"), "the body to start")
        proxy.close()
        value = result.get(timeout=RESULT_TIMEOUT)
        wait_until(
            lambda: (
                f"the outcome of key 'send-{tag}' will be stored by a message"
                in redis_worker.worker.log_text()
            ),
            "the worker to publish the outcome",
        )
        # Two finish messages find the store still down before it comes back.
        wait_until(lambda: env.count(tag, "attempt") >= 3, "the outcome's message to retry")
        held = record(f"send-{tag}")
        assert held is not None
        assert held.status == "in_progress"
        proxy.open()
        wait_until(
            lambda: getattr(record(f"send-{tag}"), "status", None) == "completed",
            "the outcome to be stored",
        )
    finally:
        proxy.close()

    stored = record(f"send-{tag}")
    assert stored is not None
    assert stored.result == value
    assert env.count(tag, "start") == 1
    assert env.count(tag, "sent") == 1
    # A later message for the intent is a duplicate answered with that outcome.
    assert tasks.send.delay(tag).get(timeout=RESULT_TIMEOUT) == value
    assert env.count(tag, "sent") == 1


MALFORMED_FINISH: list[Any] = [
    "not an object",
    {"token": 5, "result": "1", "ttl": None, "attempt": 1},
    {"token": "abc", "result": "1", "ttl": None, "attempt": 1},
    {"token": "0" * 32, "result": "not json {", "ttl": None, "attempt": 1},
    {"token": "0" * 32, "result": "NaN", "ttl": None, "attempt": 1},
    {"token": "0" * 32, "result": "1", "ttl": 1e12, "attempt": 1},
    {"token": "0" * 32, "result": "1", "ttl": -1, "attempt": 1},
    {"token": "0" * 32, "result": "1", "ttl": None, "attempt": True},
    {"token": "0" * 32, "result": "1", "ttl": None},
]


def test_a_malformed_finish_header_is_rejected_and_writes_nothing(
    redis_worker: Running,
) -> None:
    # Anyone who can publish to the broker can send the header that stores an outcome.
    tasks, env = redis_worker.tasks, redis_worker.env
    log = redis_worker.worker.log_text
    before = log().count("malformed onceonly_finish header")
    tags = [new_tag() for _ in MALFORMED_FINISH]
    bad_keys = {tags[0]: "send-\x00nul"}  # an invalid key in a well-formed header
    for tag, finish in zip(tags, MALFORMED_FINISH, strict=True):
        headers = {HEADER_KEY: f"send-{tag}", HEADER_SCOPE: "", HEADER_FINISH: finish}
        tasks.send.apply_async((tag,), headers=headers)
    nul_tag = new_tag()
    tasks.send.apply_async(
        (nul_tag,),
        headers={
            HEADER_KEY: bad_keys[tags[0]],
            HEADER_SCOPE: "",
            HEADER_FINISH: {"token": "0" * 32, "result": "1", "ttl": None, "attempt": 1},
        },
    )

    expected = len(MALFORMED_FINISH) + 1
    wait_until(
        lambda: log().count("malformed onceonly_finish header") - before >= expected,
        f"{expected} rejections in the worker log",
    )
    for tag in [*tags, nul_tag]:
        assert record(f"send-{tag}") is None
        assert env.count(tag, "start") == 0
    # (A key with a NUL cannot even be looked up on PostgreSQL: nothing near it exists.)
    assert not IdempotencyRecord.objects.using("postgres").filter(key__endswith="nul").exists()


def test_a_finish_header_with_another_owners_token_changes_nothing(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()
    value = tasks.send.delay(tag).get(timeout=RESULT_TIMEOUT)
    first = record(f"send-{tag}")
    assert first is not None

    forged = {"token": "f" * 32, "result": '"forged"', "ttl": None, "attempt": 1}
    answer = tasks.send.apply_async(
        (tag,), headers={HEADER_KEY: f"send-{tag}", HEADER_SCOPE: "", HEADER_FINISH: forged}
    )

    assert answer.get(timeout=RESULT_TIMEOUT) == "forged"  # what it carried, not stored
    after = record(f"send-{tag}")
    assert after is not None
    assert after.status == "completed"
    assert after.result == value
    assert after.owner_token == first.owner_token
    assert env.count(tag, "sent") == 1
    assert f"could not store the outcome of key 'send-{tag}'" in redis_worker.worker.log_text()


def test_store_down_with_on_store_error_run_runs_unprotected_and_warns(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    result = tasks.send.apply_async(
        (tag,),
        **with_settings(ONCEONLY_DATABASE="outage", ONCEONLY_ON_STORE_ERROR="run"),
    )

    assert result.get(timeout=RESULT_TIMEOUT)["tag"] == tag
    assert env.count(tag, "sent") == 1
    assert record(f"send-{tag}") is None
    wait_until(
        lambda: (
            f"running key 'send-{tag}' (scope '') UNPROTECTED" in redis_worker.worker.log_text()
        ),
        "the warning in the worker log",
    )


# -- 7. canvas ---------------------------------------------------------------------------


def test_chain_of_duplicates_yields_the_stored_results(redis_worker: Running) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    def build() -> Any:
        return chain(tasks.double.s(1, tag=tag), tasks.double.s(tag=tag), tasks.double.s(tag=tag))

    assert build().apply_async().get(timeout=RESULT_TIMEOUT) == 8
    assert build().apply_async().get(timeout=RESULT_TIMEOUT) == 8
    assert sorted(e["value"] for e in env.effects_of(tag, "double")) == [1, 2, 4]


def test_group_with_duplicate_members_completes_with_the_stored_result(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    members = [tasks.double.s(value, tag=tag, sleep=0.5) for value in (1, 1, 2)]
    results = group(members).apply_async().get(timeout=RESULT_TIMEOUT)

    assert results == [2, 2, 4]
    assert sorted(e["value"] for e in env.effects_of(tag, "double")) == [1, 2]


def test_chord_with_duplicate_members_completes_and_its_body_runs_once(
    redis_worker: Running,
) -> None:
    tasks, env = redis_worker.tasks, redis_worker.env
    tag = new_tag()

    def build() -> Any:
        header = [tasks.double.s(value, tag=tag, sleep=0.5) for value in (1, 1, 3)]
        return chord(header, tasks.total.s(tag=tag))

    assert build().apply_async().get(timeout=RESULT_TIMEOUT) == 10
    assert build().apply_async().get(timeout=RESULT_TIMEOUT) == 10
    assert sorted(e["value"] for e in env.effects_of(tag, "double")) == [1, 3]
    assert env.count(tag, "total") == 1
