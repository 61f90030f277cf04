from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...resolve import resolve_unknown


class Command(BaseCommand):
    help = (
        "Ask the providers what became of unknown intents (the tasks' once_resolve) and "
        "complete, release or leave each one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=None, help="records to examine at most")
        parser.add_argument(
            "--dry-run", action="store_true", help="ask the resolvers, write nothing"
        )

    def handle(self, *args: Any, limit: int | None, dry_run: bool, **options: Any) -> None:
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        report = resolve_unknown(limit=limit, dry_run=dry_run)
        rows = [
            ("sent (completed)", report.sent),
            ("not sent (released)", report.released),
            ("still unknown (left for a person)", report.left),
            ("resolver failed (left)", report.failed),
            ("changed meanwhile (untouched)", report.changed),
            ("no resolver (left for a person)", report.no_resolver),
        ]
        for label, keys in rows:
            for key in keys:
                self.stdout.write(f"{label}: {key}")
        prefix = "Would resolve" if dry_run else "Resolved"
        self.stdout.write(
            f"{prefix} {len(report.sent) + len(report.released)} of {report.examined} record(s): "
            f"{len(report.sent)} sent, {len(report.released)} released, "
            f"{len(report.left) + len(report.failed) + len(report.no_resolver)} left, "
            f"{len(report.changed)} changed meanwhile."
        )
