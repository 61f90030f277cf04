"""The store contract: what a backend must do for ``check_lock`` to keep its promises.

A store keeps one record per ``(scope, key)``. The :class:`~django_onceonly.locks.Lock`
layer validates input, serialises results, computes times and fires signals;
:class:`BaseStore` validates what reaches the store, refuses ``transactional=True`` where
the store cannot join a transaction and raises ``LockLost``. A store implements only the
primitives below, each **one atomic step** against its backend:

=========================== ==============================================================
``_claim(request)``         claim ``(scope, key)`` or report the record that blocks it
``_finish(...) -> bool``    store the outcome if the token still owns the record
``_release(...) -> bool``   delete the record if the token still owns it
``_extend(...) -> bool``    move the lease end if the token still owns the record
``_release_if_unchanged``   delete the record if it is still the version seen
``get(scope, key)``         read the record as stored
``force_release``           delete the record whoever owns it
``_add_duplicates(counts)`` add a batch of buffered duplicate counts to their records
=========================== ==============================================================

Subclass :class:`BaseStore` and point ``ONCEONLY_STORE`` at your class to plug in another
backend; :mod:`django_onceonly.testing.contract` is the suite it must pass.
"""

from __future__ import annotations

import abc
import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..exceptions import LockLost
from ..rules import AFTER_LEASE_CHOICES, FINISHED_STATUSES, Status, check_choice, lease_is_stale
from . import duplicates
from .duplicates import DuplicateCount

# Plain re-exports of the Status values, for modules that still import them from here.
IN_PROGRESS: str = Status.IN_PROGRESS.value
COMPLETED: str = Status.COMPLETED.value
FAILED: str = Status.FAILED.value
UNKNOWN: str = Status.UNKNOWN.value
STATUSES: tuple[str, ...] = tuple(Status.values)


# Record, ClaimRequest and ClaimResult are built on every claim, so they are plain
# slotted dataclasses, not frozen ones: a frozen dataclass sets each field through
# object.__setattr__, and a Record took 4.4 µs to build that way against 0.9 µs now.
# Treat them as read-only all the same (a frozen one with a dict field could not be
# hashed either).


@dataclass(slots=True)
class Record:
    """A snapshot of one stored record, as a store returns it (read-only by convention)."""

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
        return lease_is_stale(self.status, self.lease_expires_at, now)


# The record's field names. Stores build their statements and scripts from these names
# (DatabaseStore's columns, RedisStore's hash fields and script indices), never from
# the position of a field, so the order of Record's fields carries no meaning.
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


@dataclass(slots=True)
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


@dataclass(slots=True)
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


class TakenKeys:
    """The ``(scope, key)`` pairs this process most recently found taken, at most ``size``.

    A store reads such a key before it tries to claim it, since duplicates come in storms
    on the same keys (``DatabaseStore._claim_on``, ``RedisStore._claim``). It only
    decides what a claim sends first, never its answer: a stale entry costs one extra
    round trip, nothing else.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._keys: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, name: tuple[str, str]) -> bool:
        return name in self._keys

    def add(self, name: tuple[str, str]) -> None:
        with self._lock:
            self._keys[name] = None
            self._keys.move_to_end(name)
            if len(self._keys) > self._size:
                self._keys.popitem(last=False)


class BaseStore(abc.ABC):
    """The contract every store implements.

    Rules that every primitive must keep:

    - **Atomic.** Each primitive is one atomic step. ``_claim`` in particular must never
      be read-then-write: of any number of concurrent claims on an absent key, in threads
      or in processes, exactly one is acquired.
    - **Expiry.** A record whose ``expires_at`` has passed counts as absent: a claim takes
      it over as if it were new.
    - **Stale leases.** An ``in_progress`` record whose ``lease_expires_at`` has passed is
      taken over by a claim when ``after_lease == "reclaim"`` (unless its fingerprint
      differs from the request's, both being non-empty), or turned ``unknown`` when
      ``after_lease == "hold"``. Either happens in one conditional write, so that of
      two claims finding the same stale lease, one acts and the other sees its outcome.
    - **Fencing.** ``_finish``, ``_release`` and ``_extend`` act only if the record's
      ``owner_token`` is the given token and the record is still the owner's
      (``in_progress``, or ``unknown`` after a ``"hold"``; ``_extend``: ``in_progress``
      only); otherwise they write nothing and return False (the base class then raises
      :class:`~django_onceonly.exceptions.LockLost`). The same outcome sent again by its
      owner (a command resent after its reply was lost) may return True.
    - **Resume.** When ``request.resume_token`` is not empty and the record is
      ``in_progress``, not expired and owned by ``resume_token``, the claim is acquired by
      handing the record over to ``request.token``: ``owner_token``, ``lease_expires_at``
      and ``updated_at`` change in one conditional write, whether the lease is stale or
      not, nothing else changes and no duplicate is counted. From then on the old token
      is fenced like any other, so a second claim resuming the same ``resume_token`` is
      an ordinary claim (a duplicate of the new owner). On any other record, or none,
      ``resume_token`` is ignored and the claim proceeds as usual.
    - **Duplicates.** A claim that finds a live record only reads it: it writes nothing.
      The base class counts the duplicate in this process's buffer
      (:mod:`~django_onceonly.stores.duplicates`), which hands the counts to
      :meth:`_add_duplicates` in batches, at most once a second and at exit, off the
      caller's path; :func:`~django_onceonly.stores.duplicates.flush` writes them at
      once. ``duplicates_blocked`` and ``last_duplicate_at`` are therefore up to a
      second behind, and a process killed outright loses its last second of counts.
      The exception is a ``"hold"`` that turns a stale lease ``unknown``: that claim
      writes anyway, and counts itself in the same write (``lease_expired`` is true).
    - **Errors.** A backend that cannot be reached raises
      :class:`~django_onceonly.exceptions.StoreUnavailable`; nothing is half-written.
      A record the store cannot read (edited by hand, say) raises
      :class:`~django_onceonly.exceptions.DamagedRecord`: never taken for absent.
    - **Transactions.** ``transactional=True`` asks that the write be part of the
      caller's open database transaction. Only a store whose ``supports_transactions``
      is true receives it; for the others the base class raises ``ValueError``.
    """

    #: True when the store's writes can join the caller's database transaction.
    supports_transactions: ClassVar[bool] = False

    # -- the public methods (what the Lock layer, the admin and the commands call) ---------

    def claim(self, request: ClaimRequest) -> ClaimResult:
        """Claim ``(request.scope, request.key)`` for ``request.token``, atomically."""
        self._check_transactional(request.transactional)
        check_choice("after_lease", request.after_lease, AFTER_LEASE_CHOICES)
        result = self._claim(request)
        if not result.acquired and not result.lease_expired:
            self._count_duplicate(request, result.record)
        return result

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
        if status not in FINISHED_STATUSES:
            raise ValueError(f"cannot finish with status {status!r}")
        self._check_transactional(transactional)
        done = self._finish(
            scope,
            key,
            token,
            status=status,
            result_json=result_json,
            error=error,
            now=now,
            expires_at=expires_at,
            transactional=transactional,
        )
        self._check_owned(done, key, f"finish as {status}")

    def release(self, scope: str, key: str, token: str, *, transactional: bool = False) -> None:
        """Delete the owner's record so that the next claim acquires it. ``LockLost`` otherwise."""
        self._check_transactional(transactional)
        done = self._release(scope, key, token, transactional=transactional)
        self._check_owned(done, key, "release")

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
        self._check_transactional(transactional)
        done = self._extend(
            scope,
            key,
            token,
            lease_expires_at=lease_expires_at,
            now=now,
            transactional=transactional,
        )
        self._check_owned(done, key, "extend")

    def claim_many(self, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        """Claim several keys, one result per request in the same order.

        Each claim keeps every rule of :meth:`claim`, and each is atomic on its own; the
        batch is not all-or-nothing (some keys may be acquired, others duplicates). Stores
        do it in one round trip where they can. If a claim fails (the store goes down, a
        damaged record), the claims this call acquired are released and the error
        propagates: a batch never leaves claims nobody holds. A batch may not name one
        ``(scope, key)`` twice (``ValueError``).
        """
        seen: set[tuple[str, str]] = set()
        for request in requests:
            self._check_transactional(request.transactional)
            check_choice("after_lease", request.after_lease, AFTER_LEASE_CHOICES)
            if (request.scope, request.key) in seen:
                raise ValueError(f"a batch cannot claim the key {request.key!r} twice")
            seen.add((request.scope, request.key))
        results = self._claim_many(list(requests))
        for request, result in zip(requests, results, strict=True):
            if not result.acquired and not result.lease_expired:
                self._count_duplicate(request, result.record)
        return results

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
    def get(self, scope: str, key: str) -> Record | None:
        """Return the record as stored (expired or not), or ``None``. Counts nothing."""

    @abc.abstractmethod
    def force_release(self, scope: str, key: str) -> bool:
        """Delete the record whoever owns it (an operator's decision). True if one existed.

        Works on a damaged record too: it is how an operator removes one.
        """

    # -- the primitives each store implements ------------------------------------------

    @abc.abstractmethod
    def _add_duplicates(self, counts: Sequence[DuplicateCount]) -> Sequence[DuplicateCount]:
        """Add each count to its record, in one batch where the backend allows.

        For each :class:`~django_onceonly.stores.duplicates.DuplicateCount`: if the
        record ``(scope, key)`` exists and its ``created_at`` is ``created_at`` (the
        record the duplicates were blocked by, not one claimed afresh since), add
        ``count`` to ``duplicates_blocked`` and set ``last_duplicate_at`` to
        ``last_at`` unless it is later already. A missing record is never created.
        Return the counts that could not be written, or raise (``StoreUnavailable``, say)
        if none was: those are kept for the next flush. Runs on the flusher thread (or
        in :func:`~django_onceonly.stores.duplicates.flush`), never on a claim's path.
        """

    def _count_duplicate(self, request: ClaimRequest, record: Record) -> None:
        """Count the duplicate ``request`` was, blocked by ``record`` (in the buffer)."""
        duplicates.add(self, request.scope, request.key, record.created_at, request.now)

    @abc.abstractmethod
    def _claim(self, request: ClaimRequest) -> ClaimResult:
        """:meth:`claim` in one atomic step (``transactional`` and ``after_lease`` are valid)."""

    def _claim_many(self, requests: list[ClaimRequest]) -> list[ClaimResult]:
        """:meth:`claim_many`; by default one :meth:`_claim` after the other.

        Override it to claim in one round trip. On an error, call
        :meth:`_release_acquired` with the results so far before raising.
        """
        results: list[ClaimResult] = []
        try:
            for request in requests:
                results.append(self._claim(request))
        except BaseException:
            self._release_acquired(requests, results)
            raise
        return results

    def _release_acquired(
        self, requests: Sequence[ClaimRequest], results: Sequence[ClaimResult]
    ) -> None:
        """Give back what a failed batch acquired (best effort: the leases end anyway)."""
        for request, result in zip(requests, results, strict=False):
            if result.acquired:
                with suppress(Exception):
                    self._release(
                        request.scope,
                        request.key,
                        request.token,
                        transactional=request.transactional,
                    )

    @abc.abstractmethod
    def _finish(
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
        transactional: bool,
    ) -> bool:
        """Store the outcome if ``token`` owns the record; False (nothing written) if not."""

    @abc.abstractmethod
    def _release(self, scope: str, key: str, token: str, *, transactional: bool) -> bool:
        """Delete the record if ``token`` owns it; False (nothing deleted) if not."""

    @abc.abstractmethod
    def _extend(
        self,
        scope: str,
        key: str,
        token: str,
        *,
        lease_expires_at: dt.datetime,
        now: dt.datetime,
        transactional: bool,
    ) -> bool:
        """Move the lease end if ``token`` owns the ``in_progress`` record; False if not."""

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

    # -- shared rules ---------------------------------------------------------------------

    def _check_transactional(self, transactional: bool) -> None:
        if transactional and not self.supports_transactions:
            name = type(self).__qualname__
            raise ValueError(
                f"transactional=True is not possible with {name}: it cannot take part in a "
                "database transaction. Use DatabaseStore for claims that must commit or "
                "roll back with your transaction."
            )

    @staticmethod
    def _check_owned(done: bool, key: str, what: str) -> None:
        if not done:
            raise LockLost(
                f"cannot {what} key {key!r}: this owner no longer holds it "
                "(its lease was taken over, or the key was released or finished)"
            )
