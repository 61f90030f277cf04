"""The store contract: what a backend must do for ``check_lock`` to keep its promises.

A store keeps one record per ``(scope, key)``. The :class:`~django_onceonly.locks.Lock`
layer validates input, serialises results, computes times and fires signals; a store only
has to make each operation below **one atomic step** against its backend. Subclass
:class:`BaseStore` and point ``ONCEONLY_STORE`` at your class to plug in another backend;
``tests/test_store_contract.py`` is the suite it must pass.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field, fields
from typing import Any

IN_PROGRESS = "in_progress"
COMPLETED = "completed"
FAILED = "failed"
UNKNOWN = "unknown"
STATUSES = (IN_PROGRESS, COMPLETED, FAILED, UNKNOWN)


@dataclass(frozen=True, slots=True)
class Record:
    """A snapshot of one stored record, as a store returns it."""

    scope: str
    key: str
    status: str
    owner_token: str
    fingerprint: str = ""
    result: Any = None
    error: str = ""
    task_name: str = ""
    task_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    lease_expires_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    duplicates_blocked: int = 0
    last_duplicate_at: dt.datetime | None = None

    def is_expired(self, now: dt.datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def lease_is_stale(self, now: dt.datetime) -> bool:
        return (
            self.status == IN_PROGRESS
            and self.lease_expires_at is not None
            and self.lease_expires_at <= now
        )


# The record's fields in a fixed order: the columns DatabaseStore selects, the hash
# fields RedisStore's scripts return, the values the audit sync copies.
RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Record))
TIME_FIELDS = frozenset(
    {
        "created_at",
        "updated_at",
        "completed_at",
        "lease_expires_at",
        "expires_at",
        "last_duplicate_at",
    }
)


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Everything a store needs to claim ``(scope, key)`` for the owner ``token``."""

    scope: str
    key: str
    token: str
    now: dt.datetime
    lease_expires_at: dt.datetime
    after_lease: str  # "reclaim" or "hold"
    fingerprint: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_json: str = "{}"
    task_name: str = ""
    task_id: str = ""
    transactional: bool = False
    # The token of a claim this caller made earlier and now resumes (a Celery retry
    # carries it in its message); see "Resume" in BaseStore.
    resume_token: str = ""


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The answer to a claim.

    ``acquired`` is true when the record now belongs to the request's token. Otherwise
    ``record`` is the record that blocked the claim, as it was when it blocked it.
    ``lease_expired`` is true when this claim found a stale lease and acted on it
    (took it over with ``"reclaim"``, turned it ``unknown`` with ``"hold"``).
    """

    acquired: bool
    record: Record
    lease_expired: bool = False


class BaseStore(abc.ABC):
    """The contract every store implements.

    Rules that every method must keep:

    - **Atomic.** Each method is one atomic step. ``claim`` in particular must never be
      read-then-write: of any number of concurrent claims on an absent key, in threads or
      in processes, exactly one is acquired.
    - **Expiry.** A record whose ``expires_at`` has passed counts as absent: a claim takes
      it over as if it were new.
    - **Stale leases.** An ``in_progress`` record whose ``lease_expires_at`` has passed is
      taken over by a claim when ``after_lease == "reclaim"`` (unless its fingerprint
      differs from the request's, both being non-empty), or turned ``unknown`` when
      ``after_lease == "hold"``. Either happens in one conditional write, so that of
      two claims finding the same stale lease, one acts and the other sees its outcome.
    - **Fencing.** ``finish``, ``release`` and ``extend`` act only if the record's
      ``owner_token`` is the given token and the record is still the owner's
      (``in_progress``, or ``unknown`` after a ``"hold"``); otherwise they raise
      :class:`~django_onceonly.exceptions.LockLost` and write nothing.
    - **Resume.** When ``request.resume_token`` is not empty and the record is
      ``in_progress``, not expired and owned by ``resume_token``, the claim is acquired by
      handing the record over to ``request.token``: ``owner_token``, ``lease_expires_at``
      and ``updated_at`` change in one conditional write, whether the lease is stale or
      not, nothing else changes and no duplicate is counted. From then on the old token
      is fenced like any other, so a second claim resuming the same ``resume_token`` is
      an ordinary claim (a duplicate of the new owner). On any other record, or none,
      ``resume_token`` is ignored and the claim proceeds as usual.
    - **Duplicates.** A claim that is not acquired adds one to ``duplicates_blocked`` and
      sets ``last_duplicate_at`` to ``now``, in the same step.
    - **Errors.** A backend that cannot be reached raises
      :class:`~django_onceonly.exceptions.StoreUnavailable`; nothing is half-written.
    - ``transactional=True`` asks that the write be part of the caller's open database
      transaction; a store that cannot do that raises ``ValueError``.
    """

    @abc.abstractmethod
    def claim(self, request: ClaimRequest) -> ClaimResult:
        """Claim ``(request.scope, request.key)`` for ``request.token``, atomically."""

    @abc.abstractmethod
    def finish(
        self,
        scope: str,
        key: str,
        token: str,
        *,
        status: str,
        result_json: str | None,
        error: str,
        now: dt.datetime,
        expires_at: dt.datetime | None,
        transactional: bool = False,
    ) -> None:
        """Store the outcome: ``status`` is ``completed``, ``failed`` or ``unknown``.

        ``result_json`` is the already serialised result (``None`` stores SQL/JSON null).
        The lease ends; ``expires_at`` is when the record stops blocking (``None``: never).
        Raises ``LockLost`` when ``token`` does not own the record.
        """

    @abc.abstractmethod
    def release(self, scope: str, key: str, token: str, *, transactional: bool = False) -> None:
        """Delete the owner's record so that the next claim acquires it. ``LockLost`` otherwise."""

    @abc.abstractmethod
    def extend(
        self,
        scope: str,
        key: str,
        token: str,
        *,
        lease_expires_at: dt.datetime,
        now: dt.datetime,
        transactional: bool = False,
    ) -> None:
        """Move the owner's lease end to ``lease_expires_at``. ``LockLost`` otherwise."""

    @abc.abstractmethod
    def get(self, scope: str, key: str) -> Record | None:
        """Return the record as stored (expired or not), or ``None``. Counts nothing."""

    @abc.abstractmethod
    def force_release(self, scope: str, key: str) -> bool:
        """Delete the record whoever owns it (an operator's decision). True if one existed."""

    def release_if_unchanged(
        self,
        scope: str,
        key: str,
        *,
        owner_token: str,
        status: str,
        allow_live: bool,
        now: dt.datetime,
    ) -> bool:
        """Delete the record only if it still has ``owner_token`` and ``status`` and, unless
        ``allow_live``, its lease is not live at ``now``: one atomic step. True if deleted.

        An operator's release of the version of a record they were shown (the admin's
        confirmation page): a claim that took the key over, an owner that finished it, or
        another release in between makes this release nothing.
        """
        if status not in STATUSES:
            raise ValueError(f"no record has the status {status!r}")
        return self._release_if_unchanged(
            scope, key, owner_token=owner_token, status=status, allow_live=allow_live, now=now
        )

    @abc.abstractmethod
    def _release_if_unchanged(
        self,
        scope: str,
        key: str,
        *,
        owner_token: str,
        status: str,
        allow_live: bool,
        now: dt.datetime,
    ) -> bool:
        """:meth:`release_if_unchanged` as one conditional delete (``status`` is valid)."""
