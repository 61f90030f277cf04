"""An email backend standing in for a provider such as SES or Postmark.

Each accepted email takes ``DEMO_PROVIDER_LATENCY`` seconds (a provider call does) and
then becomes one line in ``<EMAIL_FILE_PATH>/sent.log``. The line is appended with a
single ``write`` on an ``O_APPEND`` file, so threads and processes sending at the same
time never interleave and the demo can count every email that went out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

OUTBOX_FILE = "sent.log"


def outbox_path() -> Path:
    return Path(settings.EMAIL_FILE_PATH) / OUTBOX_FILE


class OutboxBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        path = outbox_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        sent = 0
        for message in email_messages:
            time.sleep(settings.DEMO_PROVIDER_LATENCY)
            line = "\t".join(
                [",".join(message.to), message.subject, f"pid={os.getpid()}", f"{time.time():.6f}"]
            )
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line.replace("\n", " ") + "\n").encode())
            finally:
                os.close(fd)
            sent += 1
        return sent


def read_outbox(path: Path) -> list[dict[str, Any]]:
    """The emails in an outbox file: one dict (``to``, ``subject``) per line."""
    if not path.exists():
        return []
    emails = []
    for line in path.read_text().splitlines():
        if line:
            to, subject, *_ = line.split("\t")
            emails.append({"to": to, "subject": subject})
    return emails
