"""The store contract, "Resume": a claim hands the caller's own earlier claim to a new token.

``OnceTask`` relies on this for retries: the retry message carries the token of the run
that called ``self.retry()``, and the retry claims the key with ``_resume_token=`` that
token. The hand-over must be one conditional write, so that a redelivered copy of the
same retry message (carrying the same old token) is a duplicate, never a second owner.
Every test takes ``backend``, so each store (Redis included) must pass them all.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from django_onceonly import LockLost, check_lock
from tests.conftest import Backend

SHORT = 0.3  # seconds: a lease that a test waits out
PAST_SHORT = 0.45


def test_resuming_own_claim_is_locked_under_a_new_token_and_refreshes_the_lease(
    backend: Backend,
) -> None:
    first = check_lock("resume-1", lease=5, task_name="t", task_id="id-1")
    before = backend.record("resume-1")
    assert before is not None
    assert before.lease_expires_at is not None

    resumed = check_lock("resume-1", lease=600, _resume_token=first.token or "")

    assert resumed.locked
    assert resumed.token not in (None, first.token)
    after = backend.record("resume-1")
    assert after is not None
    assert after.status == "in_progress"
    assert after.owner_token == resumed.token
    assert after.lease_expires_at is not None
    assert after.lease_expires_at > before.lease_expires_at
    # The hand-over is not a duplicate and keeps what the first claim recorded.
    assert after.duplicates_blocked == 0
    assert after.created_at == before.created_at
    assert (after.task_name, after.task_id) == ("t", "id-1")


def test_after_a_resume_the_old_token_is_fenced(backend: Backend) -> None:
    first = check_lock("resume-2")
    resumed = check_lock("resume-2", _resume_token=first.token or "")

    with pytest.raises(LockLost):
        first.complete("stale owner")
    with pytest.raises(LockLost):
        first.extend(60)
    with pytest.raises(LockLost):
        first.release()

    resumed.complete("new owner")
    record = backend.record("resume-2")
    assert record is not None
    assert (record.status, record.result) == ("completed", "new owner")


def test_resuming_the_same_token_twice_gives_one_owner(backend: Backend) -> None:
    # A redelivered copy of a retry message carries the same old token.
    first = check_lock("resume-3")
    second = check_lock("resume-3", _resume_token=first.token or "")
    third = check_lock("resume-3", _resume_token=first.token or "")

    assert second.locked
    assert third.duplicate
    assert third.record_status == "in_progress"
    record = backend.record("resume-3")
    assert record is not None
    assert record.owner_token == second.token
    assert record.duplicates_blocked == 1


def test_resuming_with_someone_elses_token_is_a_duplicate(backend: Backend) -> None:
    owner = check_lock("resume-4")
    stranger = check_lock("resume-4", _resume_token="0" * 32)

    assert stranger.duplicate
    assert stranger.record_status == "in_progress"
    record = backend.record("resume-4")
    assert record is not None
    assert record.owner_token == owner.token


@pytest.mark.parametrize("outcome", ["complete", "fail", "unknown"])
def test_resuming_a_finished_record_is_a_duplicate(backend: Backend, outcome: str) -> None:
    first = check_lock("resume-5")
    if outcome == "complete":
        first.complete({"sent": True})
    else:
        first.fail("provider said no", outcome_unknown=outcome == "unknown")

    again = check_lock("resume-5", _resume_token=first.token or "")

    assert again.duplicate
    assert (
        again.record_status
        == {
            "complete": "completed",
            "fail": "failed",
            "unknown": "unknown",
        }[outcome]
    )
    if outcome == "complete":
        assert again.result == {"sent": True}


def test_resuming_a_released_key_claims_it_afresh(backend: Backend) -> None:
    first = check_lock("resume-6")
    first.release()

    again = check_lock("resume-6", _resume_token=first.token or "")

    assert again.locked
    record = backend.record("resume-6")
    assert record is not None
    assert record.owner_token == again.token


@pytest.mark.parametrize("after_lease", ["reclaim", "hold"])
def test_resuming_own_stale_lease_is_locked_whatever_the_policy(
    backend: Backend, settings: Any, after_lease: str
) -> None:
    # The owner said "retry later"; nobody else acted on the lease meanwhile, so the
    # outcome is known (not done) and the retry may go ahead under either policy.
    settings.ONCEONLY_AFTER_LEASE = after_lease
    first = check_lock("resume-7", lease=SHORT)
    time.sleep(PAST_SHORT)

    resumed = check_lock("resume-7", lease=60, _resume_token=first.token or "")

    assert resumed.locked
    record = backend.record("resume-7")
    assert record is not None
    assert record.status == "in_progress"
    assert record.owner_token == resumed.token


def test_resuming_a_lease_someone_else_took_over_is_a_duplicate(
    backend: Backend, settings: Any
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "reclaim"
    first = check_lock("resume-8", lease=SHORT)
    time.sleep(PAST_SHORT)
    successor = check_lock("resume-8", lease=60)
    assert successor.locked

    late = check_lock("resume-8", _resume_token=first.token or "")

    assert late.duplicate
    record = backend.record("resume-8")
    assert record is not None
    assert record.owner_token == successor.token
