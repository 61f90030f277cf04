"""``manage.py demo``: the shop's emails through a real worker to a real SMTP server.

The same load runs once per way of sending (``--runs``): customers sign up through the
form and the API (some double-click), some messages are published twice, and the SMTP
server answers some first tries with a 451 or accepts them and answers too late. Then it
prints how many emails each group of customers received, counted by the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Sum
from tqdm import tqdm

from django_onceonly.models import IdempotencyRecord
from shop.demo import load, report, smtp
from shop.demo.worker import Worker

ADMIN_USER = "oncall"
ADMIN_PASSWORD = "oncall-demo"
CHANGELIST = "/admin/django_onceonly/idempotencyrecord/"


def shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def share(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {number}")
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def run_names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in load.RUNS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(load.RUNS)}, not {value!r}")
    return names


class Command(BaseCommand):
    help = (
        "Sign customers up, send their emails through a Celery worker (prefork, 2 children) "
        "to an SMTP server on 127.0.0.1 that fails as real ones do, once with plain tasks "
        "and once with OnceTask; print what the server received. --serve then shows the "
        "admin. REDIS_URL set: Redis is the broker and RedisStore keeps the records."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--users",
            type=positive_int,
            default=30,
            help="customers per run (default: %(default)s)",
        )
        parser.add_argument(
            "--double-clicks",
            type=share,
            default=0.2,
            help="share who double-click signup (default: %(default)s)",
        )
        parser.add_argument(
            "--duplicates",
            type=share,
            default=0.2,
            help="share whose messages are published twice, as at-least-once delivery does "
            "(default: %(default)s)",
        )
        parser.add_argument(
            "--transient",
            type=share,
            default=0.2,
            help='share whose emails first get "451 try again later" from the SMTP server '
            "(default: %(default)s)",
        )
        parser.add_argument(
            "--timeouts",
            type=share,
            default=0.1,
            help="share whose emails the server accepts, then answers after the sender's "
            "timeout (default: %(default)s)",
        )
        parser.add_argument(
            "--resets",
            type=share,
            default=0.5,
            help="share who also ask for a password reset (default: %(default)s)",
        )
        parser.add_argument(
            "--runs",
            type=run_names,
            default=",".join(load.RUNS),
            help="ways of sending to compare, in this order (default: %(default)s): "
            + "; ".join(f"{r.name} = {r.title}" for r in load.RUNS.values()),
        )
        parser.add_argument(
            "--store",
            choices=["database", "redis"],
            default=None,
            help="where OnceTask keeps its records (default: redis if REDIS_URL is set)",
        )
        parser.add_argument(
            "--broker",
            choices=["filesystem", "redis"],
            default=None,
            help="kombu's filesystem transport, or Redis (default: redis if REDIS_URL is set)",
        )
        parser.add_argument(
            "--seed", type=int, default=11, help="who gets which scenario (default: %(default)s)"
        )
        parser.add_argument(
            "--serve",
            action="store_true",
            help="serve the last run's admin (runserver on 127.0.0.1) instead of running",
        )
        parser.add_argument(
            "--port", type=int, default=8000, help="for --serve (default: %(default)s)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.reexec_for(options["store"], options["broker"])
        if options["serve"]:
            self.serve(options["port"])
            return
        started = time.monotonic()
        rates = {
            load.DOUBLE_CLICK: options["double_clicks"],
            load.DUPLICATE: options["duplicates"],
            load.TRANSIENT: options["transient"],
            load.TIMEOUT: options["timeouts"],
        }
        plan = load.Load.plan(options["users"], rates, options["resets"], options["seed"])
        self.reset_state()
        outbox: Path = settings.OUTBOX_DIR
        server = smtp.DemoSMTPServer(outbox / "mail", late_answer=settings.EMAIL_TIMEOUT + 1.0)
        server.start()
        self.stdout.write(
            f"SMTP server on 127.0.0.1:{server.port}; broker: {settings.DEMO_BROKER}; "
            f"records: {settings.ONCEONLY_STORE.rsplit('.', 1)[-1]}; files: {shown(outbox)}"
        )
        runs = [load.RUNS[name] for name in options["runs"]]
        workers: dict[str, Worker] = {}
        outcomes = []
        try:
            # One worker per run, each on its run's queue, all started at once: while one
            # run sends, the next run's worker is already up.
            for run in runs:
                workers[run.name] = self.worker(run, server.port)
            for run in runs:
                outcomes.append(self.run_once(run, plan, server, workers[run.name]))
            self.print_report(outcomes, options, time.monotonic() - started)
        finally:
            for worker in workers.values():
                worker.stop()
            server.stop()

    # -- set-up ----------------------------------------------------------------------

    def reexec_for(self, store: str | None, broker: str | None) -> None:
        """Settings are read at start-up: run again with the store and broker asked for."""
        wanted = {"DEMO_STORE": store, "DEMO_BROKER": broker}
        current = {"DEMO_STORE": settings.DEMO_STORE, "DEMO_BROKER": settings.DEMO_BROKER}
        change = {k: v for k, v in wanted.items() if v is not None and v != current[k]}
        if not change:
            return
        if "redis" in change.values() and not settings.REDIS_URL:
            raise CommandError("redis needs REDIS_URL, e.g. REDIS_URL=redis://127.0.0.1:6379/0")
        os.environ.update({k: str(v) for k, v in change.items()})
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, *sys.argv])

    def reset_state(self) -> None:
        """A fresh database, broker folder, mailboxes and (under our prefix) Redis keys."""
        outbox: Path = settings.OUTBOX_DIR
        for folder in (
            "mail",
            "results",
            "logs",
            "broker/messages",
            "broker/messages.incoming",
            "broker/processed",
        ):
            shutil.rmtree(outbox / folder, ignore_errors=True)
            (outbox / folder).mkdir(parents=True, exist_ok=True)
        database = Path(settings.DATABASES["default"]["NAME"])
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                database.with_name(database.name + suffix).unlink()
        if settings.REDIS_URL:
            self.delete_redis_keys()
        call_command("migrate", interactive=False, verbosity=0)
        get_user_model().objects.create_superuser(ADMIN_USER, "oncall@shop.example", ADMIN_PASSWORD)

    def delete_redis_keys(self) -> None:
        """Only this demo's keys (its prefix): never FLUSHDB, other data may share the database."""
        import redis

        conn = redis.Redis.from_url(settings.REDIS_URL)
        batch = list(conn.scan_iter(match=f"{settings.REDIS_PREFIX}:*", count=1000))
        for start in range(0, len(batch), 1000):
            conn.unlink(*batch[start : start + 1000])
        conn.close()

    # -- one run ---------------------------------------------------------------------

    def worker(self, run: load.Run, smtp_port: int) -> Worker:
        outbox: Path = settings.OUTBOX_DIR
        return Worker(
            run.name,
            run.queue,
            outbox / "logs" / f"worker-{run.name}.log",
            {
                "DJANGO_SETTINGS_MODULE": "demo_site.settings",
                "DEMO_SMTP_PORT": str(smtp_port),
                "DEMO_AFTER_LEASE": run.after_lease,
            },
        )

    def run_once(
        self, run: load.Run, plan: load.Load, server: smtp.DemoSMTPServer, worker: Worker
    ) -> report.Outcome:
        started = time.monotonic()
        faults = {
            load.address(run.name, number): load.FAULTS[scenario]
            for number, scenario in enumerate(plan.scenarios, 1)
            if scenario in load.FAULTS
        }
        mailbox = server.begin(run.name, faults)
        try:
            self.stdout.write(f"\n{run.name}: {run.title}")
            self.stdout.flush()
            worker.wait_ready()
            customers, task_ids = load.send(run, plan)
            with tqdm(
                total=len(task_ids),
                desc=f"  {run.name}",
                unit="task",
                file=sys.stderr,
                disable=None,
            ) as bar:
                settled = load.wait(task_ids, bar.update, worker.alive)
        except Exception as exc:
            raise CommandError(f"{run.name}: {exc}\nworker log: {worker.log}") from exc
        finally:
            # Its work is done: it shuts down while the next run goes on.
            worker.terminate()
        records, unknown, blocked = self.records(run, customers)
        outcome = report.Outcome(
            run=run,
            customers=customers,
            received=smtp.read_maildir(mailbox),
            mailbox=mailbox,
            faults=Counter(server.faults_injected),
            tasks={"published": len(task_ids), "states": settled.states, "errors": settled.errors},
            records=records,
            unknown=unknown,
            duplicates_blocked=blocked,
            seconds=time.monotonic() - started,
        )
        self.stdout.write(
            f"  {len(task_ids)} tasks in {outcome.seconds:.1f}s; the SMTP server kept "
            f"{sum(outcome.received.values())} emails"
        )
        return outcome

    def records(
        self, run: load.Run, customers: list[load.Customer]
    ) -> tuple[Counter[str], list[str], int]:
        """Statuses of this run's intents, read from the table the admin shows."""
        if run.scope is None:
            return Counter(), [], 0
        if settings.DEMO_STORE == "redis":
            from django_onceonly.stores.audit import sync_audit

            sync_audit()  # RedisStore's records, copied to the table for the admin
        keys = [key for customer in customers for key in customer.keys]
        rows = IdempotencyRecord.objects.filter(scope=run.scope, key__in=keys)
        statuses = Counter(rows.values_list("status", flat=True))
        unknown = sorted(rows.filter(status="unknown").values_list("key", flat=True))
        blocked = rows.aggregate(total=Sum("duplicates_blocked"))["total"] or 0
        return statuses, unknown, blocked

    # -- the report ------------------------------------------------------------------

    def print_report(
        self, outcomes: list[report.Outcome], options: dict[str, Any], seconds: float
    ) -> None:
        outbox: Path = settings.OUTBOX_DIR
        self.stdout.write("")
        self.stdout.write(textwrap.fill(report.describe_faults(outcomes[0]) + ".", width=92))
        self.stdout.write("Emails received per group of customers, counted by the SMTP server:")
        self.stdout.write("")
        for line in report.table(outcomes):
            self.stdout.write("  " + line)
        self.stdout.write("")
        lines, broken = report.verdict(outcomes)
        for line in lines:
            self.stdout.write(textwrap.fill(line, width=92, subsequent_indent="  "))
        report.write_json(
            outbox / "report.json",
            outcomes,
            {
                key: options[key]
                for key in (
                    "users",
                    "double_clicks",
                    "duplicates",
                    "transient",
                    "timeouts",
                    "resets",
                    "seed",
                )
            }
            | {"store": settings.ONCEONLY_STORE, "broker": settings.DEMO_BROKER},
        )
        self.stdout.write("")
        self.stdout.write(
            f"Each customer's count: {shown(outbox / 'report.json')}; "
            f"the mail: {shown(outbox / 'mail')}/"
        )
        self.stdout.write(
            "See the intents, the duplicates blocked and the unknown ones in the admin:\n"
            f"  bin/demo --serve    then http://127.0.0.1:8000{CHANGELIST}\n"
            f"  login: {ADMIN_USER} / {ADMIN_PASSWORD}"
        )
        self.stdout.write(f"All of the above took {seconds:.0f}s.")
        if broken:
            raise CommandError("OnceTask broke a promise: " + "; ".join(broken))

    def serve(self, port: int) -> None:
        database = Path(settings.DATABASES["default"]["NAME"])
        if not database.exists():
            raise CommandError("nothing to show yet: run bin/demo first")
        self.stdout.write(
            f"The admin: http://127.0.0.1:{port}{CHANGELIST}  (login: {ADMIN_USER} / "
            f"{ADMIN_PASSWORD}); the signup page: http://127.0.0.1:{port}/signup/ (its emails "
            "wait in the broker: no worker runs while serving)"
        )
        call_command("runserver", f"127.0.0.1:{port}", use_reloader=False)
