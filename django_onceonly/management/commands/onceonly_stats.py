from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from ...outbox import outbox_health
from ...stats import COUNT_CAP, RecordLine, Summary, summarize


class Command(BaseCommand):
    help = (
        "Print the summary the admin shows: records per status, stuck and unknown ones, "
        "duplicates blocked in the last 24 hours and the keys that blocked the most."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database", default=None, help="database alias (default: ONCEONLY_DATABASE)"
        )
        parser.add_argument("--top", type=int, default=10, help="keys to list (default 10)")
        parser.add_argument(
            "--exact",
            action="store_true",
            help=f"count every row instead of estimating counts above {COUNT_CAP:,} (slow on big tables)",
        )
        parser.add_argument("--json", action="store_true", dest="as_json", help="print JSON")

    def handle(
        self,
        *args: Any,
        database: str | None,
        top: int,
        exact: bool,
        as_json: bool,
        **options: Any,
    ) -> None:
        summary = summarize(using=database, top=max(top, 0), cap=None if exact else COUNT_CAP)
        outbox = outbox_health(using=database)
        if as_json:
            data = {**summary.as_dict(), "outbox": outbox.as_dict()}
            self.stdout.write(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            self.stdout.write(render(summary) + "\n\n" + outbox.describe())


def _line(line: RecordLine) -> str:
    scope = line.scope or "-"
    return f"  {line.duplicates_blocked:>10,}  {line.status:<11}  {scope:<16}  {line.key}"


def render(summary: Summary) -> str:
    """The summary as the command prints it."""
    hours = int(summary.window.total_seconds() // 3600)
    width = 36
    out = [
        f"Sent intents in database {summary.database!r} at "
        f"{timezone.localtime(summary.now):%Y-%m-%d %H:%M:%S %Z}",
        "",
        "Records by status:",
    ]
    for status, count in summary.by_status.items():
        out.append(f"  {status:<{width - 2}}{count!s:>16}")
    out += [
        f"  {'total':<{width - 2}}{summary.total!s:>16}",
        "",
        "Needs a person:",
        f"  {'unknown':<{width - 2}}{summary.by_status.get('unknown')!s:>16}",
        f"  {'stuck in progress (lease ended)':<{width - 2}}{summary.stuck!s:>16}",
        f"  {'expired, awaiting purge':<{width - 2}}{summary.expired!s:>16}",
        "",
        f"Duplicates blocked, last {hours} h: {summary.duplicates_in_window:,} "
        f"(by {summary.records_with_duplicates_in_window:,} intents whose last duplicate "
        "came in that time; includes their earlier duplicates)",
    ]
    if summary.top_keys:
        out += ["", f"Top keys by duplicates blocked (last {hours} h):"]
        out += [f"  {'duplicates':>10}  {'status':<11}  {'scope':<16}  key"]
        out += [_line(line) for line in summary.top_keys]
    if summary.needs_attention:
        out += ["", "Unknown or stuck (newest first):"]
        out += [f"  {'created':<19}  {'status':<11}  {'scope':<16}  key"]
        out += [
            f"  {timezone.localtime(line.created_at):%Y-%m-%d %H:%M:%S}  {line.status:<11}  "
            f"{line.scope or '-':<16}  {line.key}"
            for line in summary.needs_attention
        ]
    if not summary.exact:
        out += ["", "Counts marked 'about' are estimates; --exact counts every row."]
    return "\n".join(out)
