"""The races of :mod:`django_onceonly.testing.races` on every store configuration.

Of any number of concurrent claims on one key, in threads or processes, exactly one is
``locked``; stale leases, expired records and an operator's release racing a takeover
too. Each race prints how many trials it ran. PostgreSQL's asynchronous commit of a
duplicate, a detail of DatabaseStore, follows the class.
"""

from __future__ import annotations

import pytest
from django.db import connections, transaction

from django_onceonly import check_lock
from django_onceonly.testing.contract import StoreUnderTest
from django_onceonly.testing.races import RaceContract
from tests.conftest import Backend, backend_params

pytestmark = pytest.mark.slow

# SQLite serialises writers on a file lock (every duplicate counts itself, so each trial
# is 16 writes in a row): a modest count keeps it quick and still races.
TRIALS = {"sqlite": 30, "postgres": 200, "mariadb": 200, "redis": 200}


class TestRaces(RaceContract):
    @pytest.fixture
    def onceonly_store(self, backend: Backend) -> StoreUnderTest:
        return StoreUnderTest(name=backend.name, race_trials=TRIALS[backend.name])


def _synchronous_commit(alias: str) -> str:
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        value: str = cursor.fetchone()[0]
    return value


@pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)
def test_a_duplicate_never_makes_the_callers_commit_asynchronous(backend: Backend) -> None:
    # A racer that loses only reads (its count is buffered and written later, see
    # stores/duplicates.py): nothing about the caller's transaction may change.
    baseline = _synchronous_commit(backend.alias)
    assert check_lock("durable-a").locked
    assert check_lock("durable-b").locked

    assert check_lock("durable-a").duplicate
    assert _synchronous_commit(backend.alias) == baseline

    with transaction.atomic(using=backend.alias):
        assert check_lock("durable-a", transactional=True).duplicate
        assert _synchronous_commit(backend.alias) == baseline
        # On a connection of its own; another key, as this transaction now holds a's row.
        assert check_lock("durable-b").duplicate
        assert _synchronous_commit(backend.alias) == baseline
    for key, duplicates in (("durable-a", 2), ("durable-b", 1)):
        record = backend.record(key)
        assert record is not None
        assert record.duplicates_blocked == duplicates
