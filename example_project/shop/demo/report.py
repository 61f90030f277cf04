"""What each run did, counted by the SMTP server, and the report the demo prints."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shop.emails import RESET_SUBJECT, WELCOME_SUBJECT

from .load import CLEAN, DOUBLE_CLICK, DUPLICATE, SCENARIOS, TIMEOUT, TRANSIENT, Customer, Run
from .smtp import LATE
from .smtp import TRANSIENT as SMTP_TRANSIENT


@dataclass
class Outcome:
    """One run: its customers, what the SMTP server kept, the records left behind."""

    run: Run
    customers: list[Customer]
    received: Counter[tuple[str, str]]  # (recipient, subject) -> messages kept
    mailbox: Path
    faults: Counter[str]  # fault -> first tries the server faulted
    tasks: dict[str, Any]
    records: Counter[str]  # status -> records of this run's intents
    unknown: list[str]  # the keys left "unknown"
    duplicates_blocked: int  # as the records count them
    seconds: float

    def emails(self, customer: Customer) -> tuple[int, int]:
        """(welcome, password reset) emails the server kept for ``customer``."""
        return (
            self.received[(customer.email, WELCOME_SUBJECT)],
            self.received[(customer.email, RESET_SUBJECT)],
        )

    def got(self, customer: Customer) -> int:
        return sum(self.emails(customer))

    def by_scenario(self) -> dict[str, tuple[int, int, int]]:
        """scenario -> (customers, emails expected, emails received)."""
        rows: dict[str, tuple[int, int, int]] = {}
        for scenario in SCENARIOS:
            group = [c for c in self.customers if c.scenario == scenario]
            if group:
                rows[scenario] = (
                    len(group),
                    sum(expected(c) for c in group),
                    sum(self.got(c) for c in group),
                )
        return rows

    @property
    def extra(self) -> int:
        return sum(max(0, self.got(c) - expected(c)) for c in self.customers)

    @property
    def missing(self) -> int:
        return sum(max(0, expected(c) - self.got(c)) for c in self.customers)

    def extra_in(self, *scenarios: str) -> int:
        return sum(
            max(0, self.got(c) - expected(c)) for c in self.customers if c.scenario in scenarios
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.run.title,
            "mailbox": str(self.mailbox),
            "seconds": round(self.seconds, 1),
            "emails_received": sum(self.received.values()),
            "emails_expected": sum(expected(c) for c in self.customers),
            "faults_injected": dict(self.faults),
            "tasks": self.tasks,
            "records": dict(self.records),
            "unknown": self.unknown,
            "duplicates_blocked": self.duplicates_blocked,
            "customers": {
                c.email: {
                    "scenario": c.scenario,
                    "user_id": c.user_id,
                    "password_reset_token_id": c.token_id or None,
                    "expected": expected(c),
                    "welcome": self.emails(c)[0],
                    "password_reset": self.emails(c)[1],
                }
                for c in self.customers
            },
        }


def expected(customer: Customer) -> int:
    return 1 + int(customer.reset)


def write_json(path: Path, outcomes: list[Outcome], settings: dict[str, Any]) -> None:
    report = {"settings": settings, "runs": {o.run.name: o.as_json() for o in outcomes}}
    path.write_text(json.dumps(report, indent=2) + "\n")


def table(outcomes: list[Outcome]) -> list[str]:
    """Emails received per scenario and run: ``received`` (``max`` for one customer)."""
    first = outcomes[0]
    head = ["scenario", "customers", "expected", *(o.run.name for o in outcomes)]
    rows: list[list[str]] = []
    for scenario, (count, want, _) in first.by_scenario().items():
        cells = [SCENARIOS[scenario], str(count), str(want)]
        for outcome in outcomes:
            group = [c for c in outcome.customers if c.scenario == scenario]
            got = sum(outcome.got(c) for c in group)
            most = max((outcome.got(c) for c in group), default=0)
            cells.append(f"{got} (max {most})" if got != want else str(got))
        rows.append(cells)
    rows.append(
        [
            "all",
            str(len(first.customers)),
            str(sum(expected(c) for c in first.customers)),
            *(str(sum(o.got(c) for c in o.customers)) for o in outcomes),
        ]
    )
    rows.append(
        [
            "records left unknown",
            "",
            "",
            *("-" if o.run.scope is None else str(len(o.unknown)) for o in outcomes),
        ]
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            [cells[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        ).rstrip()

    return [
        line(head),
        line(["-" * w for w in widths]),
        *map(line, rows[:-2]),
        line(["-" * w for w in widths]),
        *map(line, rows[-2:]),
    ]


def verdict(outcomes: list[Outcome]) -> tuple[list[str], list[str]]:
    """The honest report, and the broken promises (the demo fails if there is any)."""
    runs = {o.run.name: o for o in outcomes}
    plain, reclaim, hold = runs.get("plain"), runs.get("reclaim"), runs.get("hold")
    guarded = [o for o in (reclaim, hold) if o is not None]
    lines: list[str] = []
    broken = [
        f"{o.run.name}: {o.missing} expected emails never arrived" for o in outcomes if o.missing
    ]
    for outcome in guarded:
        # A timed-out email sent again under "reclaim" is the one duplicate it may send.
        allowed = outcome.extra_in(TIMEOUT) if outcome is reclaim else 0
        if outcome.extra - allowed:
            broken.append(
                f"{outcome.run.name}: {outcome.extra - allowed} duplicate emails OnceTask should stop"
            )
    if hold is not None and len(hold.unknown) != hold.faults[LATE]:
        broken.append(
            f"hold: {hold.faults[LATE]} answers timed out but {len(hold.unknown)} records are unknown"
        )

    if plain is not None:
        worst = max(plain.customers, key=plain.got)
        welcome, reset = plain.emails(worst)
        lines.append(
            f"Plain tasks: {plain.extra} emails too many. Double-clicked signups sent "
            f"{plain.extra_in(DOUBLE_CLICK)} extra, messages published twice "
            f"{plain.extra_in(DUPLICATE)}, timeouts retried {plain.extra_in(TIMEOUT)}; "
            f"{worst.email} got {welcome} welcome and {reset} password-reset emails."
        )
    if guarded:
        before = f" (the plain tasks: {plain.extra_in(DOUBLE_CLICK, DUPLICATE)})" if plain else ""
        sent = ", ".join(f"{o.extra_in(DOUBLE_CLICK, DUPLICATE)} in {o.run.name}" for o in guarded)
        blocked = ", ".join(f"{o.duplicates_blocked} in {o.run.name}" for o in guarded)
        lines.append(
            "Prevented by OnceTask: the extra emails of double clicks and messages published "
            f"twice{before}. OnceTask sent {sent}. Duplicates blocked, as the admin counts "
            f"them: {blocked} (one that waited for the first send counts twice)."
        )
    transient = [o for o in outcomes if o.faults[SMTP_TRANSIENT]]
    if transient and not any(o.extra_in(TRANSIENT) or o.missing for o in transient):
        lines.append(
            f"Retried, not lost: {transient[0].faults[SMTP_TRANSIENT]} first tries got "
            '"451 try again later"; after the retry each of those emails arrived exactly once, '
            "in every run (OnceTask's retry carries its claim)."
        )
    if reclaim is not None and reclaim.faults[LATE]:
        lines.append(
            f"Not preventable without the provider (reclaim): the server accepted "
            f"{reclaim.faults[LATE]} emails and answered after the sender's timeout. With "
            "timeouts retried, OnceTask released the claim and the retry sent "
            f"{reclaim.extra_in(TIMEOUT)} of them again. Nothing in front of SMTP can know the "
            "first one went out; only a provider that honours an idempotency key (the "
            "X-Idempotency-Key header sent here) could drop the repeat."
        )
    if hold is not None and hold.faults[LATE]:
        arrived = sum(hold.got(c) for c in hold.customers if c.scenario == TIMEOUT)
        lines.append(
            f"Held for review (hold): with once_ambiguous the same {hold.faults[LATE]} timeouts "
            f"became {len(hold.unknown)} records with status unknown, sent once and never "
            'retried (ONCEONLY_AFTER_LEASE="hold" does the same for a worker that dies '
            "mid-send). A person decides in the admin; the server's mailbox shows that all "
            f"{arrived} of those emails did arrive."
        )
    return lines, broken


def describe_faults(outcome: Outcome) -> str:
    groups = Counter(c.scenario for c in outcome.customers)
    parts = [f"{SCENARIOS[s]}: {groups[s]}" for s in SCENARIOS if s != CLEAN and groups[s]]
    resets = sum(1 for c in outcome.customers if c.reset)
    return (
        f"{len(outcome.customers)} customers sign up ({resets} also ask for a password "
        f"reset); {'; '.join(parts)}"
    )
