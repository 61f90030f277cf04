"""The demo's SMTP server: aiosmtpd on 127.0.0.1, every accepted message kept on disk.

It stands in for a mail provider and misbehaves as providers do, on the first attempt
of a message (a recipient and subject) to a recipient it was told to fault:

- ``TRANSIENT``: answers ``451`` to the end of the message and keeps nothing;
- ``LATE``: keeps the message, then answers only after ``late_answer`` seconds, longer
  than the sender waits. The email went out; the sender sees a timeout.

Each run writes to its own Maildir (``<root>/<run>/``); every file in it is one message
the server accepted, with a ``Delivered-To:`` line per recipient. That folder, not what
the tasks report, is what the demo counts.
"""

from __future__ import annotations

import asyncio
import mailbox
import socket
import threading
from collections import Counter
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

TRANSIENT = "transient"
LATE = "late"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_maildir(folder: Path) -> Counter[tuple[str, str]]:
    """Messages in a Maildir per ``(recipient, subject)``: the server's own count."""
    counts: Counter[tuple[str, str]] = Counter()
    if not folder.exists():
        return counts
    parser = BytesHeaderParser()
    for message in mailbox.Maildir(folder, create=False):
        headers = parser.parsebytes(message.as_bytes())
        for recipient in headers.get_all("Delivered-To") or []:
            counts[(recipient, str(headers["Subject"]))] += 1
    return counts


class _Handler:
    def __init__(self, server: DemoSMTPServer) -> None:
        self.server = server

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        subject = str(BytesHeaderParser().parsebytes(envelope.original_content)["Subject"])
        fault = self.server.fault(envelope.rcpt_tos, subject)
        if fault == TRANSIENT:
            return "451 4.3.0 Mailbox busy, try again later"
        self.server.keep(envelope.rcpt_tos, envelope.original_content)
        if fault == LATE:
            # Accepted and kept: the answer comes after the sender has given up.
            await asyncio.sleep(self.server.late_answer)
        return "250 2.0.0 Ok: queued"


class DemoSMTPServer:
    """Start with :meth:`start`, point each run at its mailbox with :meth:`begin`."""

    def __init__(self, root: Path, *, late_answer: float) -> None:
        self.root = root
        self.late_answer = late_answer
        self.port = free_port()
        self._lock = threading.Lock()
        self._faults: dict[str, str] = {}
        self._seen: set[tuple[str, str]] = set()
        self._box: mailbox.Maildir | None = None
        self.faults_injected: Counter[str] = Counter()
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def begin(self, run: str, faults: dict[str, str]) -> Path:
        """Keep the next messages in ``<root>/<run>/``; fault these recipients' first tries."""
        folder = self.root / run
        with self._lock:
            self._box = mailbox.Maildir(folder, create=True)
            self._faults = dict(faults)
            self._seen = set()
            self.faults_injected = Counter()
        return folder

    def fault(self, recipients: list[str], subject: str) -> str | None:
        with self._lock:
            for recipient in recipients:
                kind = self._faults.get(recipient)
                if kind and (recipient, subject) not in self._seen:
                    self._seen.add((recipient, subject))
                    self.faults_injected[kind] += 1
                    return kind
                self._seen.add((recipient, subject))
        return None

    def keep(self, recipients: list[str], content: bytes) -> None:
        delivered = b"".join(f"Delivered-To: {r}\r\n".encode() for r in recipients)
        with self._lock:
            assert self._box is not None, "begin() a run first"
            self._box.add(delivered + content)
