"""Which real servers the tests can reach, and how to start the ones that are down."""

from __future__ import annotations

import functools
import os
import socket

SERVICES: dict[str, tuple[str, int, str]] = {
    # name: (host, port, how to start it on a developer machine)
    "postgres": (
        os.environ.get("ONCEONLY_TEST_PG_HOST", "127.0.0.1"),
        int(os.environ.get("ONCEONLY_TEST_PG_PORT", "5432")),
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    "mariadb": (
        os.environ.get("ONCEONLY_TEST_MARIADB_HOST", "127.0.0.1"),
        int(os.environ.get("ONCEONLY_TEST_MARIADB_PORT", "3306")),
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    ),
    "redis": (
        os.environ.get("ONCEONLY_TEST_REDIS_HOST", "127.0.0.1"),
        int(os.environ.get("ONCEONLY_TEST_REDIS_PORT", "6379")),
        "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
    ),
    "rabbitmq": (
        os.environ.get("ONCEONLY_TEST_RABBITMQ_HOST", "127.0.0.1"),
        int(os.environ.get("ONCEONLY_TEST_RABBITMQ_PORT", "5672")),
        "rabbitmq-server -detached",
    ),
}

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@functools.cache
def is_up(name: str) -> bool:
    # Asked once per session: probing again for every collected test could catch a busy
    # server's slow accept and skip one test at random.
    host, port, _ = SERVICES[name]
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def how_to_start(name: str) -> str:
    host, port, command = SERVICES[name]
    return f"{name} is not answering on {host}:{port}; start it with: {command}"
