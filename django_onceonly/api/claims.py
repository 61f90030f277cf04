"""Acting on a claim over HTTP, where the caller holds a token instead of the ``Lock``.

Between ``check-lock`` and ``complete`` the ``Lock`` object is gone (they are two
requests, perhaps to two server processes). What the owner keeps is the token, and a
``Lock`` can be rebuilt from the stored record and that token: the store still fences
every write on ``(scope, key, token)``, so the rebuilt handle is exactly as powerful as
the token, and ``Lock.complete`` / ``release`` / ``fail`` keep one definition (result
encoding and its size limit, expiry, signals) for both ways in.

The ``ttl`` asked for at check-lock time is needed again at completion (a finished
record blocks duplicates for ``ttl`` from then), and no stored field holds it while the
claim runs. It travels inside the token the API hands out: ``<store token>.<ttl>``. The
caller can only change its own claim's ttl that way, to a value it could have asked
for in the first place, and :func:`parse_token` validates it like any ttl.
"""

from __future__ import annotations

from django.utils import timezone

from ..conf import conf
from ..exceptions import LockLost
from ..locks import LOCKED, Lock
from ..rules import seconds
from ..stores import Record, get_store


class NotFound(Exception):
    """No live record for ``(scope, key)``: absent, expired, or another scope's."""


def issue_token(lock: Lock) -> str:
    """The token the API gives the owner: the store token and the claim's ttl."""
    token, ttl = lock.token or "", lock.ttl
    if ttl is None:  # forever (ONCEONLY_TTL = None)
        return token
    return f"{token}.{int(ttl) if ttl == int(ttl) else ttl!r}"


def parse_token(token: str) -> tuple[str, float | None]:
    """``(store token, ttl)``; a malformed ttl part makes a token that owns nothing."""
    store_token, dot, ttl_text = token.partition(".")
    if not dot:
        return store_token, conf.ONCEONLY_TTL
    try:
        return store_token, seconds(float(ttl_text), "ttl")
    except (ValueError, OverflowError):
        # A token we never issued: "" never matches a stored owner token, so LockLost.
        return "", None


def live_record(scope: str, key: str) -> Record:
    """The record of ``(scope, key)`` unless it is absent or expired (``NotFound``)."""
    record = get_store().get(scope, key)
    if record is None or record.is_expired(timezone.now()):
        raise NotFound(key)
    return record


def owned_lock(scope: str, key: str, token: str) -> Lock:
    """A ``Lock`` for ``(scope, key)`` held by ``token``, as ``check_lock`` returned it.

    Raises ``NotFound`` when there is no live record. Whether ``token`` still owns it is
    decided by the store when the lock acts (``LockLost`` then, nothing written).
    """
    store_token, ttl = parse_token(token)
    record = live_record(scope, key)
    return Lock(
        key=key,
        scope=scope,
        status=LOCKED,
        record=record,
        token=store_token,
        ttl=ttl,
        on_error="release",
        transactional=False,
        now=timezone.now(),
    )


def lost_or_absent(scope: str, key: str, exc: LockLost) -> Exception:
    """After ``LockLost``: ``NotFound`` if the record has gone meanwhile, else ``exc``.

    A record released or expired between the read and the write is answered like one
    that was never there (404), a record another token owns like a stale token (409).
    """
    try:
        live_record(scope, key)
    except NotFound as absent:
        return absent
    return exc
