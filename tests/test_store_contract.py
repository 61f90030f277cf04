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
from django.utils import timezone

from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import ClaimRequest, RedisStore, duplicates
from django_onceonly.stores.audit import sync_audit
from django_onceonly.stores.base import RECORD_FIELDS
from django_onceonly.testing.contract import StoreContract, StoreUnderTest
from tests.conftest import Backend

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
