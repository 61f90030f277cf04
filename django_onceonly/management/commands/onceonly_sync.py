from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...exceptions import StoreUnavailable
from ...stores.audit import SyncReport, sync_audit


class Command(BaseCommand):
    help = (
        "Copy RedisStore records to the IdempotencyRecord table (the admin's audit trail). "
        "Once, or every --interval seconds with --loop."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="records per transaction (default 1000)"
        )
        parser.add_argument("--loop", action="store_true", help="keep syncing until stopped")
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="seconds between passes with --loop (default 1): the audit trail's delay",
        )

    def handle(
        self, *args: Any, batch_size: int, loop: bool, interval: float, **options: Any
    ) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if interval <= 0:
            raise CommandError("--interval must be positive")
        while True:
            try:
                report = sync_audit(batch_size=batch_size)
            except ImproperlyConfigured as exc:
                raise CommandError(str(exc)) from exc
            except StoreUnavailable as exc:
                if not loop:
                    raise CommandError(str(exc)) from exc
                # Redis is down: nothing changes while it is; try again next pass.
                self.stderr.write(str(exc))
            else:
                if not loop or report.copied or report.deleted:
                    self.stdout.write(self._describe(report))
            if not loop:
                return
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return

    @staticmethod
    def _describe(report: SyncReport) -> str:
        if report.locked_out:
            return "Another onceonly_sync is running; nothing done."
        text = f"Copied {report.copied} record(s), deleted {report.deleted}."
        if report.pending:
            text += f" {report.pending} changed meanwhile and will be copied next pass."
        return text
