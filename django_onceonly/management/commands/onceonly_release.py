from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from ...exceptions import DamagedRecord, InvalidKey
from ...keys import validate_key, validate_scope
from ...rules import Status, lease_is_live
from ...stores import Record, get_store

logger = logging.getLogger("django_onceonly")


def _time(value: dt.datetime | None) -> str:
    return "-" if value is None else f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S %Z}"


def describe(record: Record, now: dt.datetime) -> str:
    """The record as the command shows it before releasing it."""
    lines = [
        f"Key {record.key!r} (scope {record.scope!r})",
        f"  status:             {record.status}",
        f"  owner token:        {record.owner_token[:8]}…",
    ]
    if record.task_name or record.task_id:
        lines.append(f"  task:               {record.task_name or '-'} ({record.task_id or '-'})")
    lines.append(f"  created:            {_time(record.created_at)}")
    if record.completed_at is not None:
        lines.append(f"  completed:          {_time(record.completed_at)}")
    if record.status == Status.IN_PROGRESS and record.lease_expires_at is not None:
        live = lease_is_live(record.status, record.lease_expires_at, now)
        state = "live until" if live else "ended at"
        lines.append(f"  lease:              {state} {_time(record.lease_expires_at)}")
    if record.error:
        lines.append(f"  error:              {record.error}")
    lines.append(f"  duplicates blocked: {record.duplicates_blocked}")
    return "\n".join(lines)


class Command(BaseCommand):
    help = (
        "Release an intent so that it may run again (deletes its record). Shows the record "
        "first; a claim whose lease is live is released only with --force."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key")
        parser.add_argument("--scope", default="", help="the key's scope (default: empty)")
        parser.add_argument(
            "--force",
            action="store_true",
            help="release it even if its lease is live (its owner may be running it now)",
        )

    def handle(self, *args: Any, key: str, scope: str, force: bool, **options: Any) -> None:
        try:
            validate_key(key)
            validate_scope(scope)
        except InvalidKey as exc:
            raise CommandError(str(exc)) from exc
        store = get_store()
        try:
            record = store.get(scope, key)
        except DamagedRecord as exc:
            # Nothing to show or compare, and no owner can finish, release or extend it:
            # it blocks its intent until it is deleted, whatever it holds.
            self.stdout.write(
                f"Key {key!r} (scope {scope!r}): the stored record is damaged ({exc.detail})."
            )
            if not store.force_release(scope, key):
                raise CommandError(f"No record for key {key!r} in scope {scope!r}.") from exc
            self._released(key, scope, "damaged")
            return
        if record is None:
            raise CommandError(f"No record for key {key!r} in scope {scope!r}.")
        now = timezone.now()
        self.stdout.write(describe(record, now))
        if lease_is_live(record.status, record.lease_expires_at, now) and not force:
            raise CommandError(
                "Its lease is live: an owner may be running it right now, and releasing it "
                "lets a retry run in parallel. Nothing released; pass --force to release "
                "it anyway (its owner then gets LockLost)."
            )
        # Only the version shown above: one atomic step in the store.
        if not store.release_if_unchanged(
            scope,
            key,
            owner_token=record.owner_token,
            status=record.status,
            allow_live=force,
            now=now,
        ):
            raise CommandError(
                "It changed while being released (claimed, finished, extended or released "
                "by someone else). Nothing released; run the command again to see it now."
            )
        self._released(key, scope, record.status)

    def _released(self, key: str, scope: str, status: str) -> None:
        logger.info(
            "django-onceonly: key %r (scope %r) released by manage.py onceonly_release "
            "(status was %s)",
            key,
            scope,
            status,
        )
        self.stdout.write(f"Released {key!r} (scope {scope!r}).")
