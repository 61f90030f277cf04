"""Fixtures that run real Celery workers (separate processes, prefork pool) for the tests.

Loaded from ``tests/conftest.py`` (``pytest_plugins``). A worker consumes a queue whose
name is unique to this test session, so no other worker takes its messages, and talks
to the PostgreSQL test database that pytest-django created for this session. It is
stopped before that database is dropped.
"""

from __future__ import annotations

import contextlib
import os
import select
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
from django.db import connections

from django_onceonly.stores import Record, duplicates, get_store
from tests.celery.app import Tasks, make_app, read_effects

ROOT = Path(__file__).resolve().parents[2]
REDIS_BROKER = os.environ.get("ONCEONLY_TEST_CELERY_REDIS", "redis://127.0.0.1:6379/9")
RABBITMQ_BROKER = os.environ.get(
    "ONCEONLY_TEST_CELERY_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//"
)
SESSION = uuid.uuid4().hex[:8]


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` if never."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class CeleryEnv:
    """What every worker of this session shares with the tests."""

    effects: Path
    database: str
    outage_port: int
    logs: Path

    def effects_of(self, tag: str, what: str | None = None) -> list[dict[str, Any]]:
        lines = read_effects(tag, self.effects)
        return [line for line in lines if what is None or line["what"] == what]

    def count(self, tag: str, what: str) -> int:
        return len(self.effects_of(tag, what))


@dataclass
class Worker:
    """A ``celery worker`` process group started by the tests."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    children: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Warm shutdown, then SIGKILL to the whole group (orphaned pool children too)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)


def start_worker(
    env: CeleryEnv,
    *,
    name: str,
    broker: str,
    queue: str,
    visibility_timeout: float | None = None,
) -> Worker:
    log = env.logs / f"{name}.log"
    worker_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.celery.settings",
        "ONCEONLY_TEST_BROKER": broker,
        "ONCEONLY_TEST_QUEUE": queue,
        "ONCEONLY_TEST_EFFECTS_DIR": str(env.effects),
        "ONCEONLY_TEST_PG_NAME": env.database,
        "ONCEONLY_TEST_OUTAGE_PORT": str(env.outage_port),
        "ONCEONLY_TEST_VISIBILITY_TIMEOUT": str(visibility_timeout or ""),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.celery.worker",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-Q",
        queue,
        "-n",
        f"{name}-{SESSION}@127.0.0.1",
        "--loglevel",
        "INFO",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(name=name, process=process, log=log)
    deadline = time.monotonic() + 60
    while " ready." not in worker.log_text():
        if process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"celery worker {name} did not start:\n{worker.log_text()[-4000:]}")
        time.sleep(0.1)
    return worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TcpProxy:
    """A loopback TCP forwarder the store-outage test opens and cuts: a real outage.

    While closed nothing listens on the port (connections are refused) and every
    forwarded connection has been dropped.
    """

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # Closing alone would not wake the thread blocked in accept(), and the port
            # would keep listening; shutting the socket down does.
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture(scope="session")
def celery_env(
    django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryEnv]:
    """Effects directory, test database name and outage port shared with the workers."""
    if "postgres" not in connections:
        pytest.skip("the Celery tests need the postgres database")
    base = tmp_path_factory.mktemp("celery")
    (base / "effects").mkdir()
    (base / "logs").mkdir()
    return CeleryEnv(
        effects=base / "effects",
        database=str(connections["postgres"].settings_dict["NAME"]),
        outage_port=free_port(),
        logs=base / "logs",
    )


@dataclass
class Running:
    """A worker and the test process's own app for the same broker and queue."""

    tasks: Tasks
    worker: Worker
    env: CeleryEnv
    broker: str


def delete_queue(tasks: Tasks) -> None:
    """Delete the session's queue and the exchange of the same name Celery declared."""
    with tasks.app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.queue_delete(tasks.queue)
        channel.exchange_delete(tasks.queue)
        if connection.transport_cls == "redis":
            # Kombu keeps the binding in Redis; deleting the queue does not remove it.
            channel.client.delete(
                channel.keyprefix_queue % tasks.queue,
                channel.keyprefix_binding_permanent % tasks.queue,
            )


def _running(env: CeleryEnv, name: str, broker: str, **options: Any) -> Iterator[Running]:
    queue = f"onceonly-{name}-{SESSION}"
    worker = start_worker(env, name=name, broker=broker, queue=queue, **options)
    tasks = make_app(broker, queue, **options)
    try:
        yield Running(tasks=tasks, worker=worker, env=env, broker=broker)
    finally:
        worker.stop()
        delete_queue(tasks)


@pytest.fixture(scope="session")
def redis_worker(celery_env: CeleryEnv) -> Iterator[Running]:
    """A worker on the Redis broker (DB 9) with Redis' default visibility timeout."""
    yield from _running(celery_env, "redis", REDIS_BROKER)


@pytest.fixture(scope="session")
def redis_redelivery_worker(celery_env: CeleryEnv) -> Iterator[Running]:
    """A worker on the Redis broker whose unacked messages come back after 2 seconds."""
    yield from _running(celery_env, "redelivery", REDIS_BROKER, visibility_timeout=2)


@pytest.fixture(scope="session")
def rabbitmq_worker(celery_env: CeleryEnv) -> Iterator[Running]:
    """A worker on RabbitMQ."""
    yield from _running(celery_env, "rabbitmq", RABBITMQ_BROKER)


@pytest.fixture
def pg_records(settings: Any) -> None:
    """The test process reads the records the worker writes (PostgreSQL test database)."""
    settings.ONCEONLY_STORE = "django_onceonly.stores.DatabaseStore"
    settings.ONCEONLY_DATABASE = "postgres"


def counted_record(key: str, duplicates_blocked: int) -> Record:
    """The record ``key`` once at least ``duplicates_blocked`` duplicates are counted in it.

    A worker writes the counts of the duplicates it blocked from its flusher thread,
    within a second (stores/duplicates.py), so they reach the store a little later.
    """

    def counted() -> Record | None:
        duplicates.flush()  # those this process blocked itself
        stored = get_store().get("", key)
        return stored if stored and stored.duplicates_blocked >= duplicates_blocked else None

    record: Record = wait_until(counted, f"{duplicates_blocked} duplicate(s) counted in {key!r}")
    return record
