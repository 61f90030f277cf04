"""``manage.py demo``: the same welcome email fired by concurrent retries, sent twice ways."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

from django_onceonly.models import IdempotencyRecord
from shop.mail import outbox_path, read_outbox
from shop.models import Profile
from shop.race import race

USERNAME_PREFIX = "demo-user-"


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


@dataclass
class Row:
    approach: str
    users: int
    attempts: int
    per_user: Counter[int]  # user id -> emails counted in the outbox
    errors: list[str]
    outbox: Path

    @property
    def sent(self) -> int:
        return sum(self.per_user.values())

    @property
    def duplicated_users(self) -> int:
        return sum(1 for count in self.per_user.values() if count > 1)

    @property
    def distribution(self) -> str:
        """ "emails:users" pairs, e.g. ``1:50`` or ``2:7 3:30 4:13``."""
        spread = Counter(self.per_user.values())
        return "  ".join(f"{emails}:{users}" for emails, users in sorted(spread.items()))


class Command(BaseCommand):
    help = (
        "Create users, then fire each user's welcome email from many threads and processes "
        "at once, as retries would: once guarded by a 'sent' flag, once by check_lock. "
        "Prints how many emails really went out; exits 1 if check_lock ever sent one twice."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--users", type=positive_int, default=50)
        parser.add_argument("--threads", type=positive_int, default=8, help="per process")
        parser.add_argument("--processes", type=positive_int, default=4)
        parser.add_argument(
            "--attempts",
            type=positive_int,
            default=8,
            help="concurrent attempts per user, spread over the processes and threads",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        users: int = options["users"]
        threads: int = options["threads"]
        processes: int = options["processes"]
        attempts: int = options["attempts"]

        self.migrate()
        user_ids = self.create_users(users)
        self.stdout.write(
            f"{users} users, {attempts} concurrent attempts each ({users * attempts} in all), "
            f"from {processes} process{'es' if processes > 1 else ''} x "
            f"{threads} thread{'s' if threads > 1 else ''}; "
            f"outbox: {outbox_path().parent}"
        )
        rows = [
            self.run_approach(approach, user_ids, attempts, processes, threads)
            for approach in ("naive", "check_lock")
        ]
        self.print_table(rows)
        self.verdict(rows, users)

    def migrate(self) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        if executor.migration_plan(executor.loader.graph.leaf_nodes()):
            self.stdout.write("Migrating the demo database...")
            call_command("migrate", interactive=False, verbosity=0)

    def create_users(self, count: int) -> list[int]:
        User = get_user_model()
        User.objects.filter(username__startswith=USERNAME_PREFIX).delete()
        created = User.objects.bulk_create(
            User(
                username=f"{USERNAME_PREFIX}{n:03d}",
                email=f"{USERNAME_PREFIX}{n:03d}@example.com",
                password="!",  # unusable password
            )
            for n in range(1, count + 1)
        )
        user_ids = [user.pk for user in created]
        Profile.objects.bulk_create(Profile(user_id=pk) for pk in user_ids)
        return user_ids

    def reset(self, user_ids: list[int]) -> None:
        Profile.objects.filter(user_id__in=user_ids).update(welcome_email_sent=False)
        IdempotencyRecord.objects.filter(key__startswith="welcome_email_").delete()
        outbox_path().unlink(missing_ok=True)

    def run_approach(
        self, approach: str, user_ids: list[int], attempts: int, processes: int, threads: int
    ) -> Row:
        self.reset(user_ids)
        # Workers open their own connections; keep none open across the run.
        connections.close_all()
        try:
            report = race(
                approach, user_ids, attempts=attempts, processes=processes, threads=threads
            )
        except (RuntimeError, TimeoutError) as exc:
            raise CommandError(str(exc)) from exc
        # Counted from what the "provider" received, not from what the workers reported.
        live = outbox_path()
        saved = live.with_name(f"{approach}.log")
        if live.exists():
            live.replace(saved)
        else:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text("")
        email_to_user = dict(
            get_user_model().objects.filter(pk__in=user_ids).values_list("email", "pk")
        )
        per_user: Counter[int] = Counter(dict.fromkeys(user_ids, 0))
        for email in read_outbox(saved):
            per_user[email_to_user[email["to"]]] += 1
        return Row(
            approach=approach,
            users=len(user_ids),
            attempts=len(user_ids) * attempts,
            per_user=per_user,
            errors=report.errors,
            outbox=saved,
        )

    def print_table(self, rows: list[Row]) -> None:
        header = ("approach", "users", "attempts", "emails sent", "users with >1", "errors")
        lines = [header] + [
            (
                row.approach,
                str(row.users),
                str(row.attempts),
                str(row.sent),
                str(row.duplicated_users),
                str(len(row.errors)),
            )
            for row in rows
        ]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        self.stdout.write("")
        for i, line in enumerate(lines):
            cells = [line[0].ljust(widths[0])] + [
                cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)
            ]
            self.stdout.write("  ".join(cells))
            if i == 0:
                self.stdout.write("  ".join("-" * width for width in widths))
        self.stdout.write("")
        self.stdout.write("emails per user (emails:users)")
        for row in rows:
            self.stdout.write(f"  {row.approach.ljust(widths[0])}  {row.distribution}")
        self.stdout.write("")

    def username(self, user_id: int) -> str:
        return str(get_user_model().objects.get(pk=user_id).get_username())

    def verdict(self, rows: list[Row], users: int) -> None:
        naive, guarded = rows
        for row in rows:
            for error in row.errors[:5]:
                self.stderr.write(f"{row.approach}: {error}")
        if naive.duplicated_users:
            worst, count = naive.per_user.most_common(1)[0]
            self.stdout.write(
                f"naive:      {naive.sent - naive.users} duplicate welcome emails; "
                f"{self.username(worst)} got {count}."
            )
        else:
            self.stdout.write(
                "naive:      no duplicates this time (raise --attempts or --threads to see them)."
            )
        wrong = {user: count for user, count in guarded.per_user.items() if count != 1}
        if wrong:
            raise CommandError(
                f"check_lock: {len(wrong)} of {users} users did not get exactly one email: "
                + ", ".join(
                    f"{self.username(user)}: {count}" for user, count in sorted(wrong.items())[:10]
                )
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"check_lock: exactly one welcome email per user ({users} users). "
                f"Outboxes: {naive.outbox}, {guarded.outbox}"
            )
        )
