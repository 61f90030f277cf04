"""The service API under gunicorn, as a ratio to a trivial authenticated DRF endpoint.

    .venv/bin/python bench/api.py [--n 200] [--rounds 3] [--concurrency 8] [--stores redis,database]

One gunicorn (``--workers 2``, sync) on 127.0.0.1 serves this module as its settings
and URLconf: the service API at ``/onceonly/`` and the floor, ``POST /floor``, a DRF
``APIView`` behind the same authentication (a ``rest_framework.authtoken`` token sent
as ``Bearer``) that parses the JSON body and answers ``{"status": "ok"}``: the cost of
"a DRF request" with nothing of ours in it. An ``httpx.AsyncClient`` keeps
``--concurrency`` requests in flight and measures, per store:

- ``check-lock new``: ``POST v1/check-lock`` of a new key (a claim);
- ``check-lock duplicate``: the same on a completed key (the answer a retry gets);
- ``complete``: ``POST v1/complete`` of a claim made beforehand (not timed).

Each round runs ``--n`` requests of the floor and of each operation in turn, so that
the machine's load falls on all of them; requests per second are the median over
``--rounds`` rounds, latencies the p50 / p99 over all rounds. The ratio is the
operation's throughput over the floor's. Target: a duplicate check-lock on
``RedisStore`` at least 0.7 of the floor.

Records go to a scratch PostgreSQL database (``--db-name``, default
``onceonly_bench_api``; users and tokens live there too) created and dropped by the
script, or to Redis database 14 (``ONCEONLY_BENCH_REDIS_URL``) under a prefix of this
run, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REDIS_URL = os.environ.get("ONCEONLY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PG = {
    "HOST": os.environ.get("ONCEONLY_BENCH_PG_HOST", "127.0.0.1"),
    "PORT": os.environ.get("ONCEONLY_BENCH_PG_PORT", "5432"),
    "USER": os.environ.get("ONCEONLY_BENCH_PG_USER", "postgres"),
    "PASSWORD": os.environ.get("ONCEONLY_BENCH_PG_PASSWORD", ""),
}
STORES = {
    "database": "django_onceonly.stores.DatabaseStore",
    "redis": "django_onceonly.stores.RedisStore",
}
TARGETS = {("redis", "check-lock duplicate"): 0.7}
DUPLICATE_KEYS = 100


def bench_settings(store: str, db_name: str, redis_prefix: str) -> dict[str, Any]:
    """The Django settings of the bench process and of the server it starts."""
    return {
        "SECRET_KEY": "django-onceonly-bench",
        "DEBUG": False,
        "ALLOWED_HOSTS": ["127.0.0.1"],
        "USE_TZ": True,
        "INSTALLED_APPS": [
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "rest_framework",
            "rest_framework.authtoken",
            "django_onceonly",
        ],
        "MIDDLEWARE": [],
        "ROOT_URLCONF": "bench.api",
        "DATABASES": {
            "default": {"ENGINE": "django.db.backends.postgresql", "NAME": db_name, **PG}
        },
        "CACHES": {
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "onceonly_bench": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": REDIS_URL,
                "KEY_PREFIX": redis_prefix,
            },
        },
        "REST_FRAMEWORK": {
            "DEFAULT_AUTHENTICATION_CLASSES": [
                "django_onceonly.api.authentication.BearerTokenAuthentication"
            ],
            "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
        },
        "ONCEONLY_STORE": STORES[store],
        "ONCEONLY_REDIS_CACHE": "onceonly_bench",
        "LOGGING_CONFIG": None,
    }


# -- the server side: gunicorn imports this module as its settings and its URLconf -------

if os.environ.get("ONCEONLY_BENCH_SERVER"):
    globals().update(
        bench_settings(
            os.environ["ONCEONLY_BENCH_STORE"],
            os.environ["ONCEONLY_BENCH_DB"],
            os.environ["ONCEONLY_BENCH_PREFIX"],
        )
    )


def __getattr__(name: str) -> Any:
    # The URLconf is built on first use, once Django is set up: importing DRF views while
    # Django reads this module as its settings would be too early.
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def _urlpatterns() -> list[Any]:
    from django.urls import include, path
    from rest_framework.request import Request
    from rest_framework.response import Response
    from rest_framework.views import APIView

    class Floor(APIView):
        def post(self, request: Request) -> Response:
            request.data  # noqa: B018  (parse the body, as the API's views do)
            return Response({"status": "ok"})

    return [
        path("floor", Floor.as_view()),
        path("onceonly/", include("django_onceonly.api.urls")),
    ]


# -- the client side ------------------------------------------------------------------------


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def rate(self) -> float:
        return statistics.median(self.rates)

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gunicorn(
    store: str, db_name: str, prefix: str, workers: int, token: str
) -> tuple[Any, str]:
    port = free_port()
    env = {
        **os.environ,
        "ONCEONLY_BENCH_SERVER": "1",
        "ONCEONLY_BENCH_STORE": store,
        "ONCEONLY_BENCH_DB": db_name,
        "ONCEONLY_BENCH_PREFIX": prefix,
        "DJANGO_SETTINGS_MODULE": "bench.api",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "django.core.wsgi:get_wsgi_application()",
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            headers = {"Authorization": f"Bearer {token}"}
            if httpx.post(f"{url}/floor", headers=headers, timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    stop(process)
    raise RuntimeError("gunicorn did not start")


def stop(process: Any) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def run(
    client: Any, requests: list[tuple[str, dict[str, Any]]], concurrency: int
) -> tuple[float, list[float], list[Any]]:
    """Send ``requests`` with ``concurrency`` in flight; (req/s, latencies, answers)."""
    latencies: list[float] = [0.0] * len(requests)
    answers: list[Any] = [None] * len(requests)
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(requests):
            i = position
            position += 1
            url, body = requests[i]
            start = time.perf_counter()
            response = await client.post(url, json=body)
            latencies[i] = time.perf_counter() - start
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
            answers[i] = response.json()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(requests) / (time.perf_counter() - start), latencies, answers


async def measure(url: str, token: str, args: argparse.Namespace) -> dict[str, Figures]:
    import httpx

    api = f"{url}/onceonly/v1"
    names = ["floor", "check-lock new", "check-lock duplicate", "complete"]
    figures = {name: Figures() for name in names}
    limits = httpx.Limits(max_connections=args.concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:
        seen = [f"dup-{i}" for i in range(DUPLICATE_KEYS)]
        for key in seen:
            lock = (await client.post(f"{api}/check-lock", json={"key": key})).json()
            await client.post(f"{api}/complete", json={"key": key, "token": lock["token"]})
        for round_number in range(args.rounds + 1):  # round 0 warms up
            run_id = uuid.uuid4().hex[:8]
            new = [f"new-{run_id}-{i}" for i in range(args.n)]
            batches = {
                "floor": [(f"{url}/floor", {"key": key}) for key in new],
                "check-lock new": [(f"{api}/check-lock", {"key": key}) for key in new],
                "check-lock duplicate": [
                    (f"{api}/check-lock", {"key": seen[i % DUPLICATE_KEYS]}) for i in range(args.n)
                ],
            }
            owned = [f"owned-{run_id}-{i}" for i in range(args.n)]
            claims = [(f"{api}/check-lock", {"key": key}) for key in owned]
            _, _, locks = await run(client, claims, args.concurrency)
            batches["complete"] = [
                (f"{api}/complete", {"key": lock["key"], "token": lock["token"], "result": 1})
                for lock in locks
            ]
            for name in names:
                rate, latencies, _ = await run(client, batches[name], args.concurrency)
                if round_number:
                    figures[name].rates.append(rate)
                    figures[name].latencies.extend(latencies)
    return figures


def setup_database(db_name: str) -> str:
    """Create the scratch database, migrate it, and return a new user's token."""
    import psycopg
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    with psycopg.connect(
        host=PG["HOST"], port=PG["PORT"], user=PG["USER"], password=PG["PASSWORD"],
        dbname="postgres", autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}"')
        conn.execute(f'CREATE DATABASE "{db_name}"')
    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create_user(username=f"bench-{uuid.uuid4().hex[:8]}")
    return str(Token.objects.create(user=user).key)


def drop_database(db_name: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(
        host=PG["HOST"], port=PG["PORT"], user=PG["USER"], password=PG["PASSWORD"],
        dbname="postgres", autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def delete_redis_keys(prefix: str) -> None:
    from django_redis import get_redis_connection

    conn = get_redis_connection("onceonly_bench")
    names = list(conn.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(names), 1000):
        conn.unlink(*names[start : start + 1000])


def bench_store(store: str, args: argparse.Namespace) -> dict[str, Figures]:
    import django
    from django.conf import settings

    prefix = f"onceonly-bench-api-{uuid.uuid4().hex[:8]}"
    if not settings.configured:
        settings.configure(**bench_settings(store, args.db_name, prefix))
        django.setup()
    settings.ONCEONLY_STORE = STORES[store]
    settings.CACHES["onceonly_bench"]["KEY_PREFIX"] = prefix
    token = setup_database(args.db_name)
    process, url = start_gunicorn(store, args.db_name, prefix, args.workers, token)
    try:
        return asyncio.run(measure(url, token, args))
    finally:
        stop(process)
        drop_database(args.db_name)
        if store == "redis":
            from django.core.cache import caches

            caches["onceonly_bench"].close()
            delete_redis_keys(prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="requests per operation per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median of the rates)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--stores", default="redis,database", help="redis,database")
    parser.add_argument("--db-name", default="onceonly_bench_api", help="scratch database")
    args = parser.parse_args(argv)

    print(
        f"gunicorn {args.workers} sync workers on 127.0.0.1, httpx concurrency "
        f"{args.concurrency}, {args.n} requests x {args.rounds} rounds per figure"
    )
    print(
        f"{'store':9} {'operation':22} {'req/s':>7} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7}  target"
    )
    failed = False
    for store in args.stores.split(","):
        figures = bench_store(store, args)
        floor = figures["floor"].rate()
        for name, figure in figures.items():
            ratio = figure.rate() / floor
            target = TARGETS.get((store, name))
            verdict = ""
            if target is not None:
                verdict = f">= {target}: {'ok' if ratio >= target else 'MISSED'}"
                failed |= ratio < target
            print(
                f"{store:9} {name:22} {figure.rate():7.0f} {ratio:6.2f} "
                f"{figure.percentile(50):7.1f} {figure.percentile(99):7.1f}  {verdict}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
