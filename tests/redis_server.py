"""A redis-server of the test's own, for tests that stop, kill or restart Redis.

The shared server on 6379 must never be stopped or reconfigured: tests that need to do
that start their own instance here, on a free loopback port, in a temporary directory.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.services import IN_CI

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# Locally a missing redis-server skips these tests; in CI nothing may skip, so they fail.
needs_redis_server = pytest.mark.skipif(
    not Path(REDIS_SERVER).exists() and not IN_CI,
    reason=f"{REDIS_SERVER} is not installed (apt-get install redis-server)",
)

# name -> redis-server arguments for that persistence setting
PERSISTENCE: dict[str, list[str]] = {
    "aof-always": ["--appendonly", "yes", "--appendfsync", "always", "--save", ""],
    "aof-everysec": ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
    "rdb-only": ["--appendonly", "no", "--save", "3600 1"],
    "none": ["--appendonly", "no", "--save", ""],
}


def free_port(below: int = 55535, avoid: Collection[int] = ()) -> int:
    """A free loopback port whose cluster bus port (+10000) is free too (at most 55535).

    Neither is below 20000, nor the port is ``below`` or above, nor either in ``avoid``.
    """
    for _ in range(500):
        port = random.randrange(20000, below)
        if port in avoid or port + 10000 in avoid:
            continue
        try:
            with socket.socket() as first, socket.socket() as bus:
                first.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found")


class RedisServer:
    """One redis-server process on 127.0.0.1, restartable on the same port and directory."""

    def __init__(self, directory: Path, persistence: str = "none", *extra: str) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.extra = list(extra)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        self.starts += 1
        log = self.directory / f"redis-{self.starts}.log"
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--logfile",
                str(log),
                *PERSISTENCE[self.persistence],
                *self.extra,
            ]
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}: {log.read_text()}"
                    ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.05)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (Redis saves what its settings say); SIGKILL: a crash."""
        if self.process is None:
            return
        self.process.send_signal(how)
        self.process.wait(timeout=30)
        self.process = None

    def cache(self, **options: Any) -> dict[str, Any]:
        """A django-redis ``CACHES`` entry for this server that fails fast when it is down.

        redis-py retries a failed command 10 times with backoff by default (about 5 seconds
        against a stopped server); tests want the first failure.
        """
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": self.url,
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": 1,
                "SOCKET_TIMEOUT": 2,
                "CONNECTION_POOL_KWARGS": {"retry": Retry(NoBackoff(), 0)},
                **options,
            },
        }


def use_as_store(server: RedisServer, settings: Any) -> None:
    """Point ``RedisStore`` at ``server`` (as the cache ``"own"``) for this test."""
    settings.CACHES = {**settings.CACHES, "own": server.cache()}
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = "own"
