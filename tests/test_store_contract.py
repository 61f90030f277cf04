"""The store contract on every store configuration of ``tests/conftest.py``.

The suite itself ships in the package (:mod:`django_onceonly.testing.contract`), so that
third-party stores run the very tests ours pass; here it runs once per backend (SQLite,
PostgreSQL, MariaDB, Redis). What only this project can check, the table behind the
stores, follows the class.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from django_onceonly import DamagedRecord, check_lock
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import ClaimRequest, RedisStore, duplicates
from django_onceonly.stores.audit import sync_audit
from django_onceonly.stores.base import RECORD_FIELDS
from django_onceonly.testing.contract import StoreContract, StoreUnderTest
from tests.conftest import Backend, backend_params

ROOT = Path(__file__).resolve().parent.parent


class TestStoreContract(StoreContract):
    @pytest.fixture
    def onceonly_store(self, backend: Backend) -> StoreUnderTest:
        return StoreUnderTest(name=backend.name)


def test_every_field_reaches_the_column_of_its_name(backend: Backend) -> None:
    # Read back through the model (the admin's view of the record): a value written into
    # another field's column shows here even if the store reads it back symmetrically.
    store = backend.store
    t0 = timezone.now().replace(microsecond=654321)
    at = {n: t0 + dt.timedelta(seconds=n, microseconds=n) for n in range(1, 6)}
    request = ClaimRequest(
        scope="scope-a",
        key="key-b",
        token="token-c",
        now=t0,
        lease_expires_at=at[5],
        after_lease="reclaim",
        fingerprint="fingerprint-d",
        metadata={"metadata": "e"},
        metadata_json='{"metadata":"e"}',
        task_name="task-name-f",
        task_id="task-id-g",
    )
    assert store.claim(request).acquired
    other = ClaimRequest(
        scope="scope-a",
        key="key-b",
        token="t",
        now=at[1],
        lease_expires_at=at[4],
        after_lease="hold",
    )
    assert not store.claim(other).acquired
    store.extend("scope-a", "key-b", "token-c", lease_expires_at=at[4], now=at[2])
    duplicates.flush()
    if isinstance(store, RedisStore):
        sync_audit(store=store, using=backend.alias)

    row = IdempotencyRecord.objects.using(backend.alias).get(scope="scope-a", key="key-b")
    record = store.get("scope-a", "key-b")

    assert record is not None
    assert {name: getattr(row, name) for name in RECORD_FIELDS} == {
        name: getattr(record, name) for name in RECORD_FIELDS
    }
    assert (row.task_name, row.task_id, row.fingerprint) == (
        "task-name-f",
        "task-id-g",
        "fingerprint-d",
    )
    assert (row.created_at, row.updated_at, row.last_duplicate_at) == (t0, at[2], at[1])
    assert (row.lease_expires_at, row.duplicates_blocked) == (at[4], 1)


def _refresh_time_zone(alias: str) -> None:
    # What Django's own setting_changed receiver does for TIME_ZONE and USE_TZ.
    conn = connections[alias]
    for name in ("timezone", "timezone_name"):
        conn.__dict__.pop(name, None)
    conn.ensure_timezone()


@pytest.mark.parametrize("backend", backend_params("sqlite", "postgres", "mariadb"), indirect=True)
@pytest.mark.parametrize(
    ("use_tz", "time_zone", "connection_time_zone"),
    [(True, "UTC", None), (True, "UTC", "Asia/Kolkata"), (False, "America/Chicago", None)],
    ids=["utc", "connection-time-zone", "no-use-tz"],
)
def test_the_store_reads_times_as_the_model_reads_them(
    backend: Backend, use_tz: bool, time_zone: str, connection_time_zone: str | None
) -> None:
    # DatabaseStore reads the times itself (as text on PostgreSQL): in every time zone
    # setting they must be the very datetimes the ORM returns, tzinfo included.
    check_lock("clock", lease=600).complete("done")
    conn = connections[backend.alias]
    saved = conn.settings_dict.get("TIME_ZONE")
    try:
        with override_settings(USE_TZ=use_tz, TIME_ZONE=time_zone):
            conn.settings_dict["TIME_ZONE"] = connection_time_zone
            _refresh_time_zone(backend.alias)
            row = IdempotencyRecord.objects.using(backend.alias).get(key="clock")
            record = backend.store.get("", "clock")
            times = ("created_at", "updated_at", "completed_at", "expires_at")
            assert record is not None
            assert [getattr(record, name) for name in times] == [
                getattr(row, name) for name in times
            ]
            assert [getattr(record, name).tzinfo for name in times] == [
                getattr(row, name).tzinfo for name in times
            ]
            assert record.lease_expires_at is None
    finally:
        conn.settings_dict["TIME_ZONE"] = saved
        _refresh_time_zone(backend.alias)


@pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)
def test_a_time_python_cannot_hold_is_a_damaged_record(backend: Backend) -> None:
    # 'infinity' fits a timestamptz column but no datetime: the key stays blocked.
    check_lock("forever", lease=600).complete("done")
    with connections[backend.alias].cursor() as cursor:
        cursor.execute(
            "UPDATE django_onceonly_idempotencyrecord SET expires_at = 'infinity' WHERE key = %s",
            ["forever"],
        )

    with pytest.raises(DamagedRecord, match="cannot read datetime 'infinity'"):
        check_lock("forever")


def test_the_package_imports_pytest_only_with_its_testing_suites() -> None:
    code = (
        "import sys, django; django.setup(); "
        "import django_onceonly, django_onceonly.locks, django_onceonly.stores, "
        "django_onceonly.testing; "
        "assert 'pytest' not in sys.modules, 'imported pytest'; "
        "import django_onceonly.testing.contract, django_onceonly.testing.races; "
        "assert 'pytest' in sys.modules"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT)
