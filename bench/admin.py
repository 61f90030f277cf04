"""How fast the "Sent intents" admin answers on PostgreSQL with a million records.

    .venv/bin/python bench/admin.py [--rows 1000000] [--repeat 7] [--keep] [--explain]

Creates its own scratch database (``--db-name``, default ``onceonly_admin_bench``) on
the PostgreSQL server of the tests (``ONCEONLY_TEST_PG_HOST``/``_PORT``/``_USER``,
default 127.0.0.1:5432, postgres), migrates it, and loads ``--rows`` records in one
``INSERT ... SELECT ... FROM generate_series`` followed by ``VACUUM ANALYZE``. With
``--keep`` the database is kept at the end, and reused by the next ``--keep`` run when
it already holds the rows; without it, it is dropped.

Then, logged in as a superuser through Django's test ``Client`` (the whole request:
middleware, session, admin view, queries, template), each page is requested twice to
warm up and ``--repeat`` times more; the table shows the median and the slowest of
those, the number of SQL queries the page ran, and the most rows of the records table
that one of those queries read, per ``EXPLAIN ANALYZE`` (the target: at most a tenth of
the table, so no query reads it all, or the bounded count's ``COUNT_CAP + 1`` rows on a
small table; the summary's duplicates read the whole table up to
``SUMMARY_SCAN_LIMIT`` rows and a sample of that size above it, see ``docs/admin.md``). ``--explain`` also prints the plan of each page's slowest query.

The database keeps the migrations' indexes; a kept database made before a new
migration is migrated on the next run (the rows stay).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django
from django.conf import settings
from django.urls import path

TARGET_MS = 300.0
TABLE = "django_onceonly_idempotencyrecord"


def admin_urls() -> list[Any]:
    from django.contrib import admin

    return [path("admin/", admin.site.urls)]


urlpatterns: list[Any] = []  # filled in by configure(): this module is the URLconf


def configure(db_name: str) -> dict[str, Any]:
    connection = {
        "HOST": os.environ.get("ONCEONLY_TEST_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("ONCEONLY_TEST_PG_PORT", "5432"),
        "USER": os.environ.get("ONCEONLY_TEST_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("ONCEONLY_TEST_PG_PASSWORD", ""),
    }
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-admin",
        USE_TZ=True,
        TIME_ZONE="UTC",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django_onceonly",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        ROOT_URLCONF=__name__,
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.postgresql", "NAME": db_name, **connection}
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    return connection


def server_connection(connection: dict[str, Any]) -> Any:
    """An autocommit psycopg connection to the server's ``postgres`` database."""
    import psycopg

    return psycopg.connect(
        host=connection["HOST"],
        port=connection["PORT"],
        user=connection["USER"],
        password=connection["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )


# The records: a mix an on-call person would meet. ``g`` numbers them, oldest first,
# spread over 90 days; 1% in progress (half of them stuck past their lease), 0.5%
# unknown, 3% failed; 5% in 20 tenant scopes; 8 tasks (one "no task": direct calls);
# 20% blocked duplicates, the last one at some time in the last 30 days.
LOAD = f"""
INSERT INTO {TABLE} (
    scope, key, status, owner_token, fingerprint, result, error, task_name, task_id,
    metadata, created_at, updated_at, completed_at, lease_expires_at, expires_at,
    duplicates_blocked, last_duplicate_at)
SELECT
    scope, key, status, md5(g::text), '',
    CASE WHEN status = 'completed' THEN jsonb_build_object(
        'message_id', 'msg-' || g, 'provider', 'ses', 'accepted', true) END,
    CASE status
        WHEN 'failed' THEN 'SMTPRecipientsRefused: {{"user' || g || '@example.com": (550, "mailbox unavailable")}}'
        WHEN 'unknown' THEN 'TimeoutError: the provider did not answer within 30 s'
        ELSE '' END,
    task, CASE WHEN task = '' THEN '' ELSE md5('task' || g) END,
    jsonb_build_object('user_id', mod(g, 50000)),
    created, created,
    CASE WHEN status = 'in_progress' THEN NULL ELSE created + interval '2 seconds' END,
    CASE WHEN status <> 'in_progress' THEN NULL
         WHEN mod(g, 2) = 0 THEN now() + interval '5 minutes'
         ELSE created + interval '5 minutes' END,
    CASE WHEN status IN ('completed', 'failed') THEN created + interval '60 days' END,
    CASE WHEN mod(g, 5) = 0 THEN 1 + mod(g * 7, 40) ELSE 0 END,
    CASE WHEN mod(g, 5) = 0 THEN now() - (mod(g * 7919, 2592000)) * interval '1 second' END
FROM (
    SELECT
        g,
        CASE WHEN mod(g, 20) = 0 THEN 'tenant-' || lpad(mod(g / 20, 20)::text, 2, '0') ELSE '' END AS scope,
        (ARRAY['welcome_email_', 'pw_reset_', 'order_receipt_', 'sms_otp_', 'charge_',
               'invoice_', 'webhook_', 'export_'])[mod(g, 8) + 1] || g AS key,
        CASE WHEN mod(g, 1000) < 10 THEN 'in_progress'
             WHEN mod(g, 1000) < 15 THEN 'unknown'
             WHEN mod(g, 1000) < 45 THEN 'failed'
             ELSE 'completed' END AS status,
        (ARRAY['emails.send_welcome', 'accounts.send_password_reset', 'shop.send_receipt',
               'sms.send_otp', 'billing.charge_card', 'billing.send_invoice',
               'hooks.deliver', ''])[mod(g, 8) + 1] AS task,
        now() - (%(rows)s - g) * (interval '90 days' / %(rows)s) AS created
    FROM generate_series(1::bigint, %(rows)s) AS g
) AS rows
"""


def vacuum_analyze(connection: Any) -> None:
    """``VACUUM ANALYZE`` the records table of a Django connection (outside a transaction)."""
    connection.ensure_connection()
    raw = connection.connection
    autocommit = raw.autocommit
    raw.autocommit = True
    try:
        with raw.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {TABLE}")
    finally:
        raw.autocommit = autocommit


def load(rows: int) -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(LOAD, {"rows": rows})
    vacuum_analyze(connection)
    return time.perf_counter() - started


@dataclass
class Page:
    name: str
    url: str
    params: dict[str, Any]
    # Designed to read this many rows at most, whatever the table's size (the summary's
    # duplicates: the whole table up to its scan limit, a sample of pages above it).
    bound: int | None = None


@dataclass
class Measured:
    page: Page
    median_ms: float
    max_ms: float
    queries: int
    rows_read: int
    slowest_sql: str
    status: int


def pages(sample: Any) -> list[Page]:
    from django.urls import reverse

    from django_onceonly.stats import SUMMARY_SCAN_LIMIT

    info = "admin:django_onceonly_idempotencyrecord"
    changelist = reverse(f"{info}_changelist")
    now = sample["now"]
    return [
        Page("changelist", changelist, {}),
        Page("changelist, page 10", changelist, {"p": "10"}),
        Page("filter status=unknown", changelist, {"status__exact": "unknown"}),
        Page("filter status=completed", changelist, {"status__exact": "completed"}),
        Page("filter condition=stuck", changelist, {"condition": "stuck"}),
        Page("filter task", changelist, {"task_name": "billing.charge_card"}),
        Page("filter scope", changelist, {"scope": "tenant-07"}),
        Page(
            "filter date (one day)",
            changelist,
            {
                "created_at__year": str(now.year),
                "created_at__month": str(now.month),
                "created_at__day": str(now.day),
            },
        ),
        Page("search exact key", changelist, {"q": sample["key"]}),
        Page("search key prefix", changelist, {"q": sample["prefix"]}),
        Page("search + status filter", changelist, {"q": "charge_1", "status__exact": "failed"}),
        # A sample is whole pages drawn at random: its size varies by a few percent.
        Page("summary", reverse(f"{info}_summary"), {}, bound=int(SUMMARY_SCAN_LIMIT * 1.1)),
        Page("detail page", reverse(f"{info}_change", args=[sample["pk"]]), {}),
        Page("release confirmation", reverse(f"{info}_release"), {"ids": str(sample["pk"])}),
    ]


def rows_read(sql: str) -> int:
    """How many rows (or index entries) of the records table ``sql`` reads, per EXPLAIN ANALYZE."""
    from django.db import connection

    if not sql.lstrip().upper().startswith(("SELECT", "WITH")) or TABLE not in sql:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)

    def walk(node: dict[str, Any]) -> int:
        read = 0
        if node.get("Relation Name") == TABLE:
            loops = int(node.get("Actual Loops", 1))
            for counter in (
                "Actual Rows",
                "Rows Removed by Filter",
                "Rows Removed by Index Recheck",
            ):
                read += int(node.get(counter, 0)) * loops
        return read + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan[0]["Plan"])


def explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def measure(client: Any, page: Page, repeat: int) -> Measured:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def get() -> Any:
        return client.get(page.url, page.params)

    for _ in range(2):
        response = get()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = get()
        timings.append((time.perf_counter() - started) * 1000)
    with CaptureQueriesContext(connection) as captured:
        get()
    queries = captured.captured_queries
    slowest = max(queries, key=lambda q: float(q["time"] or 0))["sql"] if queries else ""
    return Measured(
        page=page,
        median_ms=statistics.median(timings),
        max_ms=max(timings),
        queries=len(queries),
        rows_read=max((rows_read(q["sql"]) for q in queries), default=0),
        slowest_sql=slowest,
        status=response.status_code,
    )


def report(results: list[Measured], rows: int, load_s: float | None, describe: str) -> bool:
    print(f"\n{describe}")
    loaded = f"loaded in {load_s:.1f} s" if load_s is not None else "reused (--keep)"
    print(
        f"{rows:,} records ({loaded}); median of the timed requests, target < {TARGET_MS:.0f} ms; "
        "'most rows read': the most rows of the records table one query of the page read\n"
    )
    print("| page | median ms | max ms | queries | most rows read | ok |")
    print("|---|---:|---:|---:|---:|---|")
    from django_onceonly.managers import COUNT_CAP

    # A bounded count reads COUNT_CAP + 1 rows whatever the table's size, by design.
    bound = max(rows // 10, COUNT_CAP + 1)
    passed = True
    for m in results:
        bounded = m.rows_read <= max(bound, m.page.bound or 0)
        ok = m.median_ms < TARGET_MS and bounded and m.status == 200
        passed &= ok
        note = f" (at most about {m.page.bound:,}, by design)" if m.page.bound else ""
        print(
            f"| {m.page.name} | {m.median_ms:.1f} | {m.max_ms:.1f} | {m.queries} | "
            f"{m.rows_read:,}{note} | {'yes' if ok else 'NO'} |"
        )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per page")
    parser.add_argument("--db-name", default="onceonly_admin_bench")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    parser.add_argument("--explain", action="store_true", help="print each page's slowest plan")
    args = parser.parse_args(argv)

    connection_settings = configure(args.db_name)
    urlpatterns[:] = []
    django.setup()
    urlpatterns.extend(admin_urls())

    server = server_connection(connection_settings)
    exists = server.execute(
        "SELECT 1 FROM pg_database WHERE datname = %s", [args.db_name]
    ).fetchone()
    if exists and not args.keep:
        server.execute(f'DROP DATABASE "{args.db_name}" WITH (FORCE)')
        exists = None
    if not exists:
        server.execute(f'CREATE DATABASE "{args.db_name}"')

    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.utils import timezone

    from django_onceonly.models import IdempotencyRecord

    try:
        call_command("migrate", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT reltuples::bigint FROM pg_class WHERE relname = '{TABLE}'")
            have = int(cursor.fetchone()[0])
        load_s = None
        if not (args.keep and have >= args.rows * 0.99):
            with connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {TABLE}")
            print(f"Loading {args.rows:,} records...", flush=True)
            load_s = load(args.rows)
        user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
            "bench", "bench@example.com", "bench"
        )
        client = Client()
        client.force_login(user)
        newest = IdempotencyRecord.objects.order_by("-created_at").values("pk", "key").first()
        assert newest is not None
        key = newest["key"]
        sample = {
            "pk": newest["pk"],
            "key": key,
            "prefix": key[: len(key) - 2],
            "now": timezone.localtime(),
        }
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
        results = []
        for page in pages(sample):
            results.append(measure(client, page, args.repeat))
            print(f"  measured {page.name}", file=sys.stderr, flush=True)
        passed = report(
            results, args.rows, load_s, f"PostgreSQL {version}, Django {django.get_version()}"
        )
        if args.explain:
            for m in results:
                print(
                    f"\n-- {m.page.name}: slowest query\n{m.slowest_sql}\n{explain(m.slowest_sql)}"
                )
    finally:
        connection.close()
        if not args.keep:
            server.execute(f'DROP DATABASE IF EXISTS "{args.db_name}" WITH (FORCE)')
        server.close()
    print("\nevery page under target" if passed else "\nSOME PAGES MISSED THE TARGET")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
