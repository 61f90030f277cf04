"""The demo's load: who signs up, how, and what goes wrong on the way.

Every run gets the same load: the same number of customers, each in the same scenario,
the same ones asking for a password reset. Only the tasks that send the emails change
(``RUNS``). Each customer signs up through the shop's real views, the form page or the
API endpoint in turn, with Django's test client.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.result import AsyncResult
from celery.signals import after_task_publish
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from shop.accounts import email_tasks, request_password_reset

from . import smtp

CLEAN = "clean"
DOUBLE_CLICK = "double_click"
DUPLICATE = "duplicate"
TRANSIENT = "transient"
TIMEOUT = "timeout"

SCENARIOS = {
    CLEAN: "nothing goes wrong",
    DOUBLE_CLICK: "double-clicked signup",
    DUPLICATE: "each message published twice",
    TRANSIENT: "SMTP 451 on the first try",
    TIMEOUT: "accepted, answer after timeout",
}
# The SMTP server's fault for each scenario's customers.
FAULTS = {TRANSIENT: smtp.TRANSIENT, TIMEOUT: smtp.LATE}


@dataclass(frozen=True)
class Run:
    """One way of sending the shop's emails."""

    name: str
    title: str
    tasks: str  # SHOP_EMAIL_TASKS
    after_lease: str  # ONCEONLY_AFTER_LEASE of its worker
    scope: str | None  # the scope of its records; None: it keeps none
    queue: str  # its tasks' queue (CELERY_TASK_ROUTES), which its worker consumes


RUNS = {
    "plain": Run(
        "plain",
        "plain Celery tasks, autoretry_for every SMTP error",
        "shop.demo.variants.plain",
        "reclaim",
        None,
        "demo-plain",
    ),
    "reclaim": Run(
        "reclaim",
        'OnceTask, timeouts retried, ONCEONLY_AFTER_LEASE="reclaim" (at-least-once)',
        "shop.demo.variants.at_least_once",
        "reclaim",
        "at-least-once",
        "demo-reclaim",
    ),
    "hold": Run(
        "hold",
        'OnceTask, once_ambiguous, ONCEONLY_AFTER_LEASE="hold" (at-most-once; shop.tasks)',
        "shop.tasks",
        "hold",
        "",
        "celery",
    ),
}


@dataclass(frozen=True)
class Load:
    """Each customer's scenario and whether they ask for a password reset."""

    scenarios: tuple[str, ...]
    resets: tuple[bool, ...]

    @classmethod
    def plan(cls, users: int, rates: dict[str, float], resets: float, seed: int) -> Load:
        """``rates``: the share of customers in each scenario but ``CLEAN``."""
        scenarios: list[str] = []
        for scenario, rate in rates.items():
            scenarios += [scenario] * min(round(users * rate), users - len(scenarios))
        scenarios += [CLEAN] * (users - len(scenarios))
        shuffle = random.Random(seed)
        shuffle.shuffle(scenarios)
        wants_reset = [n < round(users * resets) for n in range(users)]
        shuffle.shuffle(wants_reset)
        return cls(tuple(scenarios), tuple(wants_reset))


@dataclass
class Customer:
    number: int
    email: str
    scenario: str
    reset: bool
    user_id: int = 0
    token_id: int = 0

    @property
    def keys(self) -> list[str]:
        """The intents of this customer's emails (the shop's ``once_key`` templates)."""
        keys = [f"welcome_email_{self.user_id}"]
        if self.token_id:
            keys.append(f"pw_reset_{self.token_id}")
        return keys


def address(run: str, number: int) -> str:
    return f"{run}.user{number:03d}@shop.example"


class Published:
    """The ids of every task published from this process while it is open."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Published:
        after_task_publish.connect(self._record, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        after_task_publish.disconnect(self._record)

    def _record(self, sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        with self._lock:
            self.ids.append(str((headers or {})["id"]))


def send(run: Run, load: Load) -> tuple[list[Customer], list[str]]:
    """Sign the customers up as ``load`` says; return them and the ids of the tasks sent."""
    client = Client()
    customers = []
    User = get_user_model()
    with Published() as published, override_settings(SHOP_EMAIL_TASKS=run.tasks):
        tasks = email_tasks()
        for number, (scenario, reset) in enumerate(
            zip(load.scenarios, load.resets, strict=True), 1
        ):
            customer = Customer(number, address(run.name, number), scenario, reset)
            for _click in range(2 if scenario == DOUBLE_CLICK else 1):
                if number % 2:
                    response = client.post(
                        "/api/signup/", {"email": customer.email}, content_type="application/json"
                    )
                    assert response.status_code in (200, 201), response.content
                else:
                    response = client.post("/signup/", {"email": customer.email})
                    assert response.status_code == 302, response.content
            user = User.objects.get(username=customer.email)
            customer.user_id = user.pk
            if scenario == DUPLICATE:
                # The broker delivers it twice, or a webhook is sent again by its sender.
                tasks.send_welcome_email.delay(user.pk)
            if reset:
                customer.token_id = request_password_reset(user).pk
                if scenario == DUPLICATE:
                    tasks.send_password_reset.delay(customer.token_id)
            customers.append(customer)
    return customers, published.ids


@dataclass
class Settled:
    """How the tasks of a run ended, as their results say."""

    states: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def wait(
    task_ids: list[str],
    tick: Callable[[int], None],
    worker_alive: Callable[[], bool],
    timeout: float = 240,
) -> Settled:
    """Wait until every task has finished (succeeded or failed for good)."""
    pending = {task_id: AsyncResult(task_id) for task_id in task_ids}
    settled = Settled()
    deadline = time.monotonic() + timeout
    while pending:
        done = [task_id for task_id, result in pending.items() if result.ready()]
        for task_id in done:
            result = pending.pop(task_id)
            settled.states[result.state] = settled.states.get(result.state, 0) + 1
            if result.failed():
                name = type(result.result).__name__
                settled.errors[name] = settled.errors.get(name, 0) + 1
        if done:
            tick(len(done))
        elif not worker_alive():
            raise RuntimeError(f"the worker stopped with {len(pending)} tasks unfinished")
        elif time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} tasks still unfinished after {timeout:.0f}s")
        else:
            time.sleep(0.1)
    return settled
