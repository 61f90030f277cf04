"""``OnceTask`` in-process: key derivation, options, direct calls and eager runs.

These run the task body in the test process (``task.apply()``, ``task(...)``, or
``apply_async`` on an app with ``task_always_eager``), on every store of the ``backend``
fixture. What needs a broker and a worker is in ``tests/test_celery_guarantees.py``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from celery import Celery

from django_onceonly import InProgress, InvalidKey, InvalidResult, check_lock
from django_onceonly.celery import DuplicateTask, OnceTask
from tests.conftest import Backend

app = Celery("onceonly_eager", set_as_current=False)
# Not task_eager_propagates: with it, Celery raises a retry's Retry out of apply().
app.conf.update(task_always_eager=True, task_store_eager_result=False)

runs: list[tuple[str, Any]] = []


def run_count(name: str) -> int:
    return sum(1 for what, _ in runs if what == name)


@pytest.fixture(autouse=True)
def _clear_runs() -> None:
    runs.clear()


@app.task(base=OnceTask, bind=True, shared=False, name="eager.welcome")
def welcome(self: OnceTask, user_id: int, lang: str = "en") -> str:
    runs.append(("welcome", self.once.key))
    return self.once.key


@app.task(base=OnceTask, bind=True, shared=False, name="eager.charge")
def charge(
    self: OnceTask, amount: Decimal, at: dt.datetime, order: uuid.UUID, day: dt.date | None = None
) -> str:
    runs.append(("charge", self.once.key))
    return self.once.key


@app.task(base=OnceTask, shared=False, name="eager.unbound", once_key="unbound-{user_id}")
def unbound(user_id: int) -> str:
    runs.append(("unbound", user_id))
    return unbound.once.key


@app.task(
    base=OnceTask,
    bind=True,
    shared=False,
    name="eager.tenant",
    once_key=lambda tenant, user_id: f"user-{user_id}",
    once_scope=lambda tenant, user_id: f"tenant-{tenant}",
)
def tenant(self: OnceTask, tenant: str, user_id: int) -> list[str]:
    runs.append(("tenant", user_id))
    return [self.once.scope, self.once.key]


@app.task(
    base=OnceTask,
    bind=True,
    shared=False,
    name="eager.auto",
    once_key="auto-{user_id}",
    autoretry_for=(ConnectionError,),
    max_retries=3,
    default_retry_delay=0,
)
def auto(self: OnceTask, user_id: int, failures: int = 0) -> dict[str, Any]:
    runs.append(("auto", self.once.token))
    if self.request.retries < failures:
        raise ConnectionError("try again")
    return {"key": self.once.key, "tries": self.request.retries + 1}


@app.task(
    base=OnceTask,
    bind=True,
    shared=False,
    name="eager.moving",
    once_key="moving-{n}",
    max_retries=3,
)
def moving(self: OnceTask, n: int) -> str:
    # Retried with other arguments: the key computed for the first call still holds.
    runs.append(("moving", self.once.key))
    if n < 3:
        raise self.retry(args=(n + 1,), countdown=0)
    return self.once.key


@app.task(
    base=OnceTask,
    bind=True,
    shared=False,
    name="eager.strict",
    once_key="strict-{n}",
    once_on_duplicate="raise",
)
def strict(self: OnceTask, n: int) -> int:
    runs.append(("strict", n))
    return n


def order_key(order_id: int) -> str:
    return f"order-{order_id}"


class BillingTask(OnceTask):
    """Options as class attributes of a base: a plain function, inherited by its tasks."""

    once_scope = "billing"
    once_key = order_key  # a function in a class body: must not be bound to the task


class RefundTask(BillingTask):
    @staticmethod
    def once_key(order_id: int) -> str:
        return f"refund-{order_id}"


@app.task(base=BillingTask, shared=False, name="eager.billed")
def billed(order_id: int) -> list[str]:
    runs.append(("billed", order_id))
    return [billed.once.scope, billed.once.key]


@app.task(base=RefundTask, shared=False, name="eager.refunded")
def refunded(order_id: int) -> list[str]:
    runs.append(("refunded", order_id))
    return [refunded.once.scope, refunded.once.key]


def test_options_of_a_base_class_reach_its_tasks_unbound_and_a_subclass_overrides_them(
    backend: Backend,
) -> None:
    assert billed.apply((5,)).get() == ["billing", "order-5"]
    assert refunded.apply((5,)).get() == ["billing", "refund-5"]
    assert billed.apply((5,)).get() == ["billing", "order-5"]  # the stored result
    assert run_count("billed") == 1
    assert run_count("refunded") == 1


def test_positional_keyword_and_default_arguments_give_one_key(backend: Backend) -> None:
    keys = {
        welcome.apply((7,)).get(),
        welcome.apply((7, "en")).get(),
        welcome.apply(kwargs={"user_id": 7}).get(),
        welcome.apply((), {"lang": "en", "user_id": 7}).get(),
    }

    assert len(keys) == 1
    (key,) = keys
    assert key.startswith("eager.welcome:")
    assert run_count("welcome") == 1
    assert welcome.apply((7, "fr")).get() != key
    assert run_count("welcome") == 2


def test_uuid_decimal_datetime_and_date_are_keyed_as_the_message_carries_them(
    backend: Backend,
) -> None:
    order = uuid.UUID("12345678-1234-5678-1234-567812345678")
    at = dt.datetime(2026, 5, 1, 9, 30, tzinfo=dt.UTC)
    plus_two = dt.timezone(dt.timedelta(hours=2))

    first = charge.apply((Decimal("19.90"), at, order), {"day": dt.date(2026, 5, 1)}).get()
    # The same intent written by a producer that sends JSON text (another service, or
    # send_task by name): one key, so the body does not run again.
    same = charge.apply(
        kwargs={
            "order": str(order),
            "amount": "19.90",
            "at": "2026-05-01T09:30:00+00:00",
            "day": "2026-05-01",
        }
    ).get()
    other_day = charge.apply((Decimal("19.90"), at, order, dt.date(2026, 5, 2))).get()
    naive = charge.apply((Decimal("19.90"), at.replace(tzinfo=None), order)).get()
    # Other texts on the wire are other intents: kombu writes what it is given.
    other_offset = charge.apply((Decimal("19.90"), at.astimezone(plus_two), order)).get()
    other_places = charge.apply((Decimal("19.9"), at, order)).get()

    assert first == same
    assert len({first, other_day, naive, other_offset, other_places}) == 5
    assert run_count("charge") == 5


def test_unbound_task_binds_to_its_own_signature(backend: Backend) -> None:
    assert unbound.apply((5,)).get() == "unbound-5"
    assert unbound.apply(kwargs={"user_id": 5}).get() == "unbound-5"
    assert run_count("unbound") == 1


def test_callable_key_and_scope_get_the_task_arguments(backend: Backend) -> None:
    assert tenant.apply(("acme", 3)).get() == ["tenant-acme", "user-3"]
    assert tenant.apply(("globex", 3)).get() == ["tenant-globex", "user-3"]
    assert tenant.apply(kwargs={"tenant": "acme", "user_id": 3}).get() == [
        "tenant-acme",
        "user-3",
    ]
    assert run_count("tenant") == 2
    assert backend.record("user-3", scope="tenant-acme") is not None


def test_autoretry_wrapper_keeps_the_real_signature_and_resumes_the_claim(
    backend: Backend,
) -> None:
    result = auto.apply((4,), {"failures": 2}).get()

    assert result == {"key": "auto-4", "tries": 3}
    tokens = [token for what, token in runs if what == "auto"]
    assert len(set(tokens)) == 3  # each retry resumed the claim under a new token
    stored = backend.record("auto-4")
    assert stored is not None
    assert stored.status == "completed"
    assert stored.duplicates_blocked == 0


def test_key_from_apply_async_is_kept_when_a_retry_changes_the_arguments(
    backend: Backend,
) -> None:
    assert moving.apply_async((1,)).get() == "moving-1"
    assert [key for what, key in runs if what == "moving"] == ["moving-1"] * 3
    assert backend.record("moving-2") is None
    assert backend.record("moving-3") is None


def test_template_naming_an_unknown_argument_fails_in_the_caller(backend: Backend) -> None:
    @app.task(
        base=OnceTask, shared=False, name=f"eager.typo.{uuid.uuid4().hex}", once_key="typo-{usr_id}"
    )
    def typo(user_id: int) -> None:
        runs.append(("typo", user_id))

    with pytest.raises(InvalidKey, match="usr_id"):
        typo.apply_async((1,))
    assert run_count("typo") == 0


def test_direct_call_is_protected_like_a_message(backend: Backend) -> None:
    assert unbound(9) == "unbound-9"
    assert unbound(user_id=9) == "unbound-9"
    assert run_count("unbound") == 1


def test_direct_call_while_in_progress_raises_in_progress(backend: Backend) -> None:
    held = check_lock("unbound-11")
    assert held.locked

    with pytest.raises(InProgress) as caught:
        unbound(11)
    assert caught.value.retry_after is not None
    assert run_count("unbound") == 0


def test_on_duplicate_raise_carries_the_stored_result(backend: Backend) -> None:
    assert strict.apply((2,)).get() == 2

    with pytest.raises(DuplicateTask) as caught:
        strict.apply((2,)).get()
    assert (caught.value.key, caught.value.result) == ("strict-2", 2)
    assert run_count("strict") == 1


def test_self_once_outside_a_run_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="only set while"):
        welcome.once  # noqa: B018


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"once_on_duplicate": "ignore"}, ValueError),
        ({"once_on_in_progress": "wait"}, ValueError),
        ({"once_on_error": "retry"}, ValueError),
        ({"once_ambiguous": (TimeoutError, "socket.timeout")}, TypeError),
        ({"once_key": 42}, TypeError),
        ({"once_scope": "tenant\x00"}, InvalidKey),
        ({"once_lease": 0}, ValueError),
        ({"once_ttl": dt.timedelta(seconds=-1)}, ValueError),
        ({"once_lease": "300"}, ValueError),
        ({"once_ttl": 1e12}, ValueError),
        ({"once_ttl": float("inf")}, ValueError),
        ({"once_ttl": dt.timedelta.max}, ValueError),
        ({"once_lease": float("nan")}, ValueError),
        ({"once_lease": 1e12}, ValueError),
        ({"once_scope": "tenant\ud800"}, InvalidKey),
        ({"once_resolve": "shop.resolvers.welcome"}, TypeError),
    ],
)
def test_bad_options_fail_when_the_task_is_declared(
    options: dict[str, Any], error: type[Exception]
) -> None:
    def declare() -> None:
        @app.task(base=OnceTask, shared=False, name=f"eager.bad.{uuid.uuid4().hex}", **options)
        def bad() -> None:  # pragma: no cover - never declared
            pass

        app.tasks[bad.name]  # declaring is lazy until the app is finalised

    with pytest.raises(error):
        declare()


def test_a_single_ambiguous_exception_type_is_accepted() -> None:
    @app.task(base=OnceTask, shared=False, name="eager.one_ambiguous", once_ambiguous=TimeoutError)
    def one() -> None:  # pragma: no cover - never run
        pass

    assert app.tasks["eager.one_ambiguous"].once_ambiguous == (TimeoutError,)


@app.task(base=OnceTask, bind=True, shared=False, name="eager.surrogate", once_key="sur-{n}")
def surrogate(self: OnceTask, n: int) -> str:
    runs.append(("surrogate", n))
    return "bad\ud800"


def test_result_with_a_lone_surrogate_fails_the_task_clearly_and_frees_the_claim(
    backend: Backend,
) -> None:
    # Guarantee 5: before, UnicodeEncodeError escaped and the claim waited for its lease.
    outcome = surrogate.apply((1,))

    assert isinstance(outcome.result, InvalidResult)
    assert "lone surrogate" in str(outcome.result)
    assert backend.record("sur-1") is None
    surrogate.apply((1,))
    assert run_count("surrogate") == 2
