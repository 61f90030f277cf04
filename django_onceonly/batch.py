"""``check_locks``: claim many keys in one round trip, one :class:`Lock` per key.

For bulk sends (a newsletter to 10,000 users): each key is claimed with every rule of
:func:`~django_onceonly.check_lock` (atomic, fenced, expiry, stale leases, duplicates
counted), but a batch costs one statement on the database and one pipelined round trip
on Redis instead of one per key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from django.utils import timezone

from .conf import conf
from .exceptions import StoreUnavailable
from .keys import validate_key, validate_scope
from .locks import Lock, _answer, _Options, _unprotected
from .stores import get_store

# Larger batches are split: one statement's parameters stay well under every driver's
# limit (SQLite's is 32,766), and one Redis pipeline's reply stays small.
MAX_BATCH = 500


def check_locks(
    keys: Iterable[str],
    *,
    scope: str = "",
    ttl: float | dt.timedelta | None = None,
    lease: float | dt.timedelta | None = None,
    metadata: Mapping[str, Any] | None = None,
    on_error: str = "release",
    transactional: bool = False,
) -> list[Lock]:
    """Claim every key of ``keys``; return one :class:`Lock` per key, in the same order.

    Each lock is what :func:`~django_onceonly.check_lock` would have returned for its key
    (``locked`` or ``duplicate``, with the stored result of a completed duplicate), and
    each is used the same way (``complete``, ``release``, ``fail``, a ``with`` block).
    The options apply to every key. Keys must be distinct; every key is validated before
    anything is written. The batch is not all-or-nothing: some keys may be locked and
    others duplicates. If the store fails mid-batch, the keys this call claimed are
    released and the error propagates. Fingerprints are per intent: use ``check_lock``
    for a key that needs one.
    """
    names = list(keys)
    for key in names:
        validate_key(key)
    validate_scope(scope)
    if len(set(names)) != len(names):
        raise ValueError("check_locks() got the same key more than once")
    options = _Options.build(ttl=ttl, lease=lease, metadata=metadata, on_error=on_error)
    now = timezone.now()
    requests = [
        options.request(key, scope=scope, now=now, transactional=transactional) for key in names
    ]
    store = get_store()
    locks: list[Lock] = []
    for start in range(0, len(requests), MAX_BATCH):
        chunk = requests[start : start + MAX_BATCH]
        try:
            outcomes = store.claim_many(chunk)
        except StoreUnavailable as exc:
            if conf.ONCEONLY_ON_STORE_ERROR != "run":
                _release_all(locks)
                raise
            locks.extend(_unprotected(request, options, exc) for request in chunk)
            continue
        except BaseException:
            _release_all(locks)
            raise
        locks.extend(
            _answer(request, options, outcome)
            for request, outcome in zip(chunk, outcomes, strict=True)
        )
    return locks


def _release_all(locks: list[Lock]) -> None:
    """Give back the claims of earlier chunks when a later one fails."""
    for lock in locks:
        if lock.locked and not lock.unprotected:
            try:
                lock.release()
            except Exception:  # best effort: the lease ends anyway
                continue
