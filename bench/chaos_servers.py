"""Servers that ``bench/chaos.py`` starts, kills and restarts: all of them its own.

Never the machine's shared services: a redis-server and a PostgreSQL cluster (``initdb``
into a temporary directory) on free loopback ports, and an SMTP server that keeps every
message it accepts. Each can be crashed (SIGKILL, ``pg_ctl -m immediate``) and started
again on the same port with the same data.
"""

from __future__ import annotations

import contextlib
import glob
import mailbox
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer on port {port}") from None
            time.sleep(0.05)


class OwnRedis:
    """A redis-server on a free port whose every write is on disk before it answers.

    ``appendfsync always``: a crash (SIGKILL) loses no acknowledged write, so a restart
    tests the clients (reconnecting, retrying), not Redis' own durability settings.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.starts += 1
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / f"redis-{self.starts}.log"),
            ],
            start_new_session=True,
        )
        wait_for_port(self.port, 20, "redis-server")
        import redis

        deadline = time.monotonic() + 20
        while True:  # the port answers before the AOF is loaded
            try:
                if redis.Redis(port=self.port, socket_timeout=2).ping():
                    return
            except (redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def crash(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.crash()
            self.process = None


class OwnPostgres:
    """A PostgreSQL cluster of its own: ``initdb`` in a temporary directory, a free port.

    Run as the ``postgres`` user (``runuser``) when this process is root, since
    PostgreSQL refuses to run as root. Crashed with ``pg_ctl stop -m immediate`` (no
    checkpoint, recovery from the WAL on the next start), as a power cut would.
    """

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version)
        if not found:
            raise RuntimeError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
        self.bin = Path(found[-1])
        # A directory of its own under /tmp: the postgres user must reach it, which it
        # cannot below a private directory such as pytest's tmp_path.
        directory = Path(tempfile.mkdtemp(prefix="onceonly-chaos-pg-"))
        os.chmod(directory, 0o755)
        self.directory = directory
        self.data = directory / "data"
        self.socket_dir = directory / "socket"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.as_user: list[str] = []
        directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(directory, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        self.starts = 0

    def _run(self, *command: str) -> None:
        done = subprocess.run(
            [*self.as_user, *command], capture_output=True, text=True, check=False, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        self.starts += 1
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} "
            "-c fsync=on -c max_connections=100"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-o", options, "start",
        )  # fmt: skip

    def crash(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parent.name
    return tuple(int(p) for p in part.split(".") if p.isdigit())


class CountingSMTP:
    """An aiosmtpd server on a free port; every accepted message is kept in a Maildir.

    The Maildir, not what the workers report, is what the chaos run counts: per intent
    (the Subject), each delivery with the pid of the process that sent it.
    """

    def __init__(self, folder: Path) -> None:
        from aiosmtpd.controller import Controller

        self.folder = folder
        self.port = free_port()
        self._box = mailbox.Maildir(folder, create=True)
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self._box.add(envelope.original_content)
        return "250 2.0.0 Ok: queued"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def deliveries(self) -> dict[str, list[int]]:
        """Intent -> the pid of the sender of each delivery, in the order they arrived."""
        parser = BytesHeaderParser()
        found: list[tuple[float, str, int]] = []
        for name in os.listdir(self.folder / "new"):
            path = self.folder / "new" / name
            headers = parser.parsebytes(path.read_bytes())
            found.append(
                (
                    float(headers["X-Chaos-Sent-At"]),
                    str(headers["Subject"]),
                    int(headers["X-Chaos-Pid"]),
                )
            )
        by_intent: dict[str, list[int]] = defaultdict(list)
        for _, intent, pid in sorted(found):
            by_intent[intent].append(pid)
        return dict(by_intent)
