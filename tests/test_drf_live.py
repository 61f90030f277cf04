"""``Idempotency-Key`` against a live server: real concurrent requests, a real crash.

A fixture runs ``django-admin runserver`` (threaded) on 127.0.0.1 with
``tests/drf_server_settings.py``, on the test databases pytest-django created, once per
store. Requests go over real sockets (``http.client``). The gated views
(``tests/drf_views.py``) record each run in a file, then wait until the test opens a
gate for their key, so that the first request is still running when the second arrives.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connections

from tests.conftest import BACKENDS, Backend

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-pass"
CART = {"cart": "cart-42", "amount": "19.90"}
TRIALS = int(os.environ.get("ONCEONLY_DRF_TRIALS", "30"))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """``runserver`` for one store; ``effects`` counts the views' runs per key."""

    backend: str
    base: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        (self.base / "effects").mkdir(parents=True)
        (self.base / "gates").mkdir()
        self.log = self.base / "server.log"

    def env(self) -> dict[str, str]:
        store, alias, _ = BACKENDS[self.backend]
        names = [
            str(django_settings.DATABASES[a]["TEST"]["NAME"])  # type: ignore[index]
            for a in ("postgres", "mariadb")
            if a in django_settings.DATABASES
        ]
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.drf_server_settings",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "ONCEONLY_DRF_SQLITE": str(connections["default"].settings_dict["NAME"]),
            "ONCEONLY_DRF_DB_NAME": names[0] if names else "",
            "ONCEONLY_DRF_STORE": store,
            "ONCEONLY_DRF_DATABASE": alias,
            "ONCEONLY_DRF_REDIS_PREFIX": django_settings.REDIS_TEST_PREFIX,
            "ONCEONLY_DRF_EFFECTS": str(self.base / "effects"),
            "ONCEONLY_DRF_GATES": str(self.base / "gates"),
        }

    def command(self) -> list[str]:
        """The server process: Django's threaded runserver (an ASGI server in a subclass)."""
        return [
            sys.executable,
            "-m",
            "django",
            "runserver",
            f"127.0.0.1:{self.port}",
            "--noreload",
            "--skip-checks",
        ]

    def start(self) -> LiveServer:
        self.port = free_port()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.log.read_text()[-3000:]
                    raise RuntimeError(f"the server did not start:\n{log}") from None
                time.sleep(0.1)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(how)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def post(
        self,
        path: str,
        key: str | None,
        body: Any = CART,
        *,
        user: str = "alice",
        timeout: float = 30,
    ) -> Reply:
        token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
        headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        if key is not None:
            headers["Idempotency-Key"] = f'"{key}"'
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", path, body=json.dumps(body), headers=headers)
            response = connection.getresponse()
            return Reply(
                response.status,
                {name.lower(): value for name, value in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()

    def runs(self, key: str) -> int:
        path = self.base / "effects" / "runs.log"
        if not path.exists():
            return 0
        lines = path.read_text(encoding="utf-8").splitlines()
        return sum(1 for line in lines if line.split("\t")[1] == f'"{key}"')

    def open_gate(self, key: str) -> None:
        (self.base / "gates" / f'"{key}"').touch()


@pytest.fixture(scope="session")
def live_servers(
    django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], LiveServer]]:
    """One running server per store, started on first use, stopped before the databases go."""
    servers: dict[str, LiveServer] = {}

    def get(backend: str) -> LiveServer:
        if backend not in servers:
            servers[backend] = LiveServer(backend, tmp_path_factory.mktemp(f"live-{backend}"))
            servers[backend].start()
        return servers[backend]

    yield get
    for server in servers.values():
        server.stop()


@pytest.fixture
def server(backend: Backend, live_servers: Callable[[str], LiveServer]) -> LiveServer:
    for name in ("alice", "bob"):
        User.objects.create_user(name, password=PASSWORD)
    return live_servers(backend.name)


def race(server: LiveServer, key: str, path: str = "/drf/slow-checkout/") -> list[Reply]:
    """Two requests with one key at once; the gate opens once one of them is answered."""
    barrier = threading.Barrier(2)
    replies: list[Reply | None] = [None, None]

    def send(index: int) -> None:
        barrier.wait()
        replies[index] = server.post(path, key)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 15  # if both ran the view, both wait here: the test fails
    while all(reply is None for reply in replies) and time.monotonic() < deadline:
        time.sleep(0.005)
    server.open_gate(key)
    for thread in threads:
        thread.join(timeout=60)
    assert all(reply is not None for reply in replies), "a request got no answer"
    return [reply for reply in replies if reply is not None]


def test_two_concurrent_requests_with_one_key_run_the_view_once(server: LiveServer) -> None:
    outcomes: dict[str, int] = {}
    for _ in range(TRIALS):
        key = str(uuid.uuid4())

        replies = sorted(race(server, key), key=lambda reply: reply.status)

        statuses = [reply.status for reply in replies]
        outcomes[str(statuses)] = outcomes.get(str(statuses), 0) + 1
        assert statuses == [201, 409], f"key {key}: {statuses} {[r.body for r in replies]}"
        ran, conflict = replies
        assert conflict.headers["retry-after"] == "1"
        assert conflict.headers["content-type"] == "application/problem+json"
        assert conflict.json()["status"] == 409
        assert "idempotent-replayed" not in ran.headers
        assert server.runs(key) == 1

        replay = server.post("/drf/slow-checkout/", key)

        assert replay.status == 201
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.body == ran.body
        assert replay.headers["location"] == ran.headers["location"]
        assert server.runs(key) == 1
    print(
        f"\n{server.backend}: {TRIALS} trials of two concurrent requests with one key: "
        f"{outcomes.get('[201, 409]', 0)} ran once (201) + refused the other (409), "
        f"then replayed; other outcomes: "
        f"{ {k: v for k, v in outcomes.items() if k != '[201, 409]'} or 'none' }"
    )


def test_concurrent_requests_of_two_users_with_one_key_both_run(server: LiveServer) -> None:
    for _ in range(5):
        key = str(uuid.uuid4())
        server.open_gate(key)
        replies: dict[str, Reply] = {}

        def send(user: str, key: str = key, replies: dict[str, Reply] = replies) -> None:
            replies[user] = server.post("/drf/slow-checkout/", key, user=user)

        threads = [threading.Thread(target=send, args=(user,)) for user in ("alice", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert [replies[u].status for u in ("alice", "bob")] == [201, 201]
        assert replies["alice"].json()["order"] != replies["bob"].json()["order"]
        assert server.runs(key) == 2


def test_a_request_killed_mid_run_is_rerun_after_its_lease(server: LiveServer) -> None:
    key = str(uuid.uuid4())
    crashed: list[BaseException] = []

    def doomed() -> None:
        try:
            server.post("/drf/short-lease-checkout/", key)
        except (OSError, http.client.HTTPException) as exc:
            crashed.append(exc)

    thread = threading.Thread(target=doomed)
    thread.start()
    deadline = time.monotonic() + 30
    while server.runs(key) == 0:
        assert time.monotonic() < deadline, "the view never started"
        time.sleep(0.01)
    server.stop(signal.SIGKILL)  # the process dies inside the view: nothing is released
    thread.join(timeout=30)
    assert crashed, "the killed request still got an answer"
    server.open_gate(key)
    server.start()

    statuses = []
    deadline = time.monotonic() + 60
    while True:
        reply = server.post("/drf/short-lease-checkout/", key)
        statuses.append(reply.status)
        if reply.status != 409:
            break
        assert time.monotonic() < deadline, f"still 409 after 60 s: {statuses}"
        time.sleep(0.2)

    assert reply.status == 201
    assert "idempotent-replayed" not in reply.headers
    assert server.runs(key) == 2  # the killed run and the rerun
    assert server.post("/drf/short-lease-checkout/", key).headers["idempotent-replayed"] == "true"
    print(
        f"\n{server.backend}: killed mid-run, then {statuses.count(409)} x 409 while its "
        f"2 s lease ran, then the rerun (201)"
    )
