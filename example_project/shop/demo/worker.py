"""A real ``celery worker`` (prefork, two children) for one run of the demo."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings


class Worker:
    """``celery -A demo_site worker`` on ``queue``, in its own process group, logging to ``log``."""

    def __init__(self, name: str, queue: str, log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "demo_site",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            # The filesystem broker has no broadcast: nothing to gossip or mingle with.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--queues",
            queue,
            "--hostname",
            f"demo-{name}-{os.getpid()}@127.0.0.1",
            "--loglevel",
            "INFO",
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=settings.BASE_DIR,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the celery worker did not start; its log ({self.log}):\n"
                    + self.log_text()[-3000:]
                )
            time.sleep(0.1)

    def terminate(self) -> None:
        """Ask for a warm shutdown (running tasks finish) and go on without waiting."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Warm shutdown, waited for, then the whole group is killed (orphans too)."""
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
