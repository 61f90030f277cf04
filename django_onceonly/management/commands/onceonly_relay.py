from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...outbox import RELAY_MIN_AGE, RelayReport, drain, relay_forever


class Command(BaseCommand):
    help = (
        "Publish the outbox rows that a crash or a broker outage left behind: every "
        "--interval seconds until SIGTERM or SIGINT (or one pass with --once). Safe to "
        "run in several copies on PostgreSQL and MariaDB; run one on SQLite."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=100, help="rows per transaction (default 100)"
        )
        parser.add_argument(
            "--interval", type=float, default=1.0, help="seconds between passes (default 1)"
        )
        parser.add_argument(
            "--max-backoff",
            type=float,
            default=30.0,
            help="longest wait between passes while the broker is down (default 30)",
        )
        parser.add_argument(
            "--min-age",
            type=float,
            default=RELAY_MIN_AGE,
            help=f"leave rows younger than this to the fast path (default {RELAY_MIN_AGE:g} s)",
        )
        parser.add_argument("--once", action="store_true", help="drain once and exit")

    def handle(
        self,
        *args: Any,
        batch_size: int,
        interval: float,
        max_backoff: float,
        min_age: float,
        once: bool,
        **options: Any,
    ) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if interval <= 0 or max_backoff <= 0 or min_age < 0:
            raise CommandError(
                "--interval and --max-backoff must be positive, --min-age not negative"
            )
        if once:
            self.stdout.write(self._describe(drain(batch_size=batch_size, min_age=min_age)))
            return
        stop = threading.Event()

        def request_stop(signum: int, frame: Any) -> None:
            # The pass in progress finishes and marks what it published; then the loop ends.
            stop.set()

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        self.stdout.write("Relay started.")
        self.stdout.flush()
        try:
            relay_forever(
                stop,
                batch_size=batch_size,
                interval=interval,
                max_backoff=max_backoff,
                min_age=min_age,
                on_report=self._report,
            )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("Relay stopped.")

    def _report(self, report: RelayReport) -> None:
        if report.published or report.failed:
            self.stdout.write(self._describe(report))
            self.stdout.flush()

    @staticmethod
    def _describe(report: RelayReport) -> str:
        text = f"Published {report.published} message(s)"
        if report.failed:
            text += f", {report.failed} failed ({report.error})"
        if report.stalled:
            text += "; the broker looks down, backing off"
        return text + "."
