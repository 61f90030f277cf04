from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import conf
from ...models import IdempotencyRecord
from ...outbox import purge_published


class Command(BaseCommand):
    help = "Delete expired idempotency records, and published outbox messages, in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=1000, help="rows per DELETE (default 1000)"
        )
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted")

    def handle(self, *args: Any, batch_size: int, dry_run: bool, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        records = IdempotencyRecord.objects.using(conf.ONCEONLY_DATABASE)
        count = records.purge_expired(batch_size=batch_size, dry_run=dry_run)
        published = purge_published(batch_size=batch_size, dry_run=dry_run)
        if dry_run:
            self.stdout.write(f"{count} expired record(s) would be deleted.")
            if published:
                self.stdout.write(f"{published} published outbox message(s) would be deleted.")
        else:
            self.stdout.write(f"Deleted {count} expired record(s).")
            if published:
                self.stdout.write(f"Deleted {published} published outbox message(s).")
