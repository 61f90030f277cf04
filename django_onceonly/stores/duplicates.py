"""Duplicate counts, buffered per process and written in batches off the caller's path.

A claim that finds its key taken only reads: the store answers with the record, and
:meth:`~django_onceonly.stores.base.BaseStore.claim` adds one to this process's buffer
(a dict update under a lock that is never held across I/O). A daemon thread, started by
the first duplicate in each process, writes the buffer at most once a second, each
store's counts in one batch (:meth:`~django_onceonly.stores.base.BaseStore._add_duplicates`);
so do :func:`flush` at exit (``atexit``, and multiprocessing's and billiard's exit
hooks, which forked children run instead of ``atexit``) and Celery's
``worker_process_shutdown``.

What this costs: a process that dies without running its exit hooks (SIGKILL, a power
cut) loses the counts of its last second at most, so ``duplicates_blocked`` is then a
lower bound. A claim never waits for a flush and a flush never raises: a store that is
down keeps its counts for the next flush, up to :data:`MAX_PENDING` records (past that
new counts are dropped, with a warning).

Counts are kept per record *incarnation*: the ``created_at`` of the record the duplicate
was blocked by. A flush adds only to a record that still has that ``created_at``, so a
count never lands on a record that was deleted, or expired and claimed afresh, since.
"""

from __future__ import annotations

import atexit
import datetime as dt
import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import BaseStore

logger = logging.getLogger("django_onceonly")

#: Seconds between two flushes of the background thread.
INTERVAL = 1.0
#: Records whose counts a process keeps while its store cannot take them.
MAX_PENDING = 100_000
#: Records per call of a store's ``_add_duplicates``.
BATCH = 500


@dataclass(frozen=True, slots=True)
class DuplicateCount:
    """The duplicates one process saw of one record since its last flush."""

    scope: str
    key: str
    #: The ``created_at`` of the record the duplicates were blocked by.
    created_at: dt.datetime | None
    count: int
    #: When the last of them was blocked (the latest ``now`` of their claims).
    last_at: dt.datetime


_Key = tuple[str, str, "dt.datetime | None"]


class _Entry:
    __slots__ = ("count", "last_at")

    def __init__(self, count: int, last_at: dt.datetime) -> None:
        self.count = count
        self.last_at = last_at

    def merge(self, count: int, last_at: dt.datetime) -> None:
        self.count += count
        if last_at > self.last_at:
            self.last_at = last_at


class _Buffer:
    """The counts of this process (one per process: :func:`_after_fork` replaces it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards pending; never held across I/O
        self.flushing = threading.Lock()  # one flush at a time
        self.pending: dict[BaseStore, dict[_Key, _Entry]] = {}
        self.size = 0
        self.dropped = 0
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()

    def add(self, store: BaseStore, name: _Key, count: int, last_at: dt.datetime) -> None:
        with self.lock:
            self._merge(store, name, count, last_at)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self.run, name="onceonly-duplicates", daemon=True
                )
                self.thread.start()

    def _merge(self, store: BaseStore, name: _Key, count: int, last_at: dt.datetime) -> None:
        counts = self.pending.setdefault(store, {})
        entry = counts.get(name)
        if entry is not None:
            entry.merge(count, last_at)
        elif self.size < MAX_PENDING:
            counts[name] = _Entry(count, last_at)
            self.size += 1
        else:
            self.dropped += count

    def take(self) -> dict[BaseStore, dict[_Key, _Entry]]:
        with self.lock:
            pending, self.pending, self.size = self.pending, {}, 0
            dropped, self.dropped = self.dropped, 0
        if dropped:
            logger.warning(
                "django-onceonly dropped %d duplicate count(s): more than %d records "
                "were waiting for a store that could not take them",
                dropped,
                MAX_PENDING,
            )
        return pending

    def flush(self) -> bool:
        """Write every pending count; True when every store took its batches."""
        with self.flushing:
            ok = True
            for store, counts in self.take().items():
                names = sorted(counts, key=lambda name: name[:2])  # one lock order for all
                for start in range(0, len(names), BATCH):
                    batch = [
                        DuplicateCount(*name, counts[name].count, counts[name].last_at)
                        for name in names[start : start + BATCH]
                    ]
                    try:
                        left = list(store._add_duplicates(batch))
                    except Exception as exc:
                        # One line: a store that is down would repeat it every second.
                        logger.warning(
                            "django-onceonly could not write duplicate counts to %s: %s",
                            type(store).__qualname__,
                            exc,
                        )
                        left = batch + [
                            DuplicateCount(*name, counts[name].count, counts[name].last_at)
                            for name in names[start + BATCH :]
                        ]
                    if left:
                        ok = False
                        logger.warning(
                            "django-onceonly keeps %d duplicate count(s) for the next flush",
                            len(left),
                        )
                        self.give_back(store, left)
                    if len(left) > len(batch):
                        break  # the store is down: the rest was given back too
            return ok

    def give_back(self, store: BaseStore, counts: list[DuplicateCount]) -> None:
        """Keep counts a flush could not write, merged with those added since."""
        with self.lock:
            for count in counts:
                name = (count.scope, count.key, count.created_at)
                self._merge(store, name, count.count, count.last_at)

    def run(self) -> None:
        while os.getpid() == self.pid:
            time.sleep(INTERVAL)
            self.flush()
            _close_thread_connections()


def _close_thread_connections() -> None:
    # The flusher thread's own database connections: closed after each flush, so that
    # none lingers between flushes (nor keeps a test database from being dropped).
    from django.db import connections

    connections.close_all()


_buffer = _Buffer()


def add(
    store: BaseStore, scope: str, key: str, created_at: dt.datetime | None, now: dt.datetime
) -> None:
    """Count one duplicate of the record ``created_at`` under ``(scope, key)``, at ``now``."""
    _buffer.add(store, (scope, key, created_at), 1, now)


def flush() -> bool:
    """Write this process's pending duplicate counts now; never raises.

    Returns True when every store took its counts (False: they are kept for the next
    flush). Tests call it before reading ``duplicates_blocked``; it runs at exit too.
    """
    try:
        return _buffer.flush()
    except Exception:  # pragma: no cover - a bug here must not break the caller
        logger.exception("django-onceonly's duplicate flush failed")
        return False


def discard() -> int:
    """Drop this process's pending duplicate counts unwritten; how many records had some.

    For tests: counts left for a store a test has stopped (its own redis-server, say)
    would otherwise wait for it, and make every later :func:`flush` return False.
    """
    return sum(len(counts) for counts in _buffer.take().values())


def _flush_at_exit(*args: object, **kwargs: object) -> None:
    flush()


def _after_fork() -> None:
    # The child starts with an empty buffer of its own: the parent keeps (and writes)
    # the counts it had, and the parent's flusher thread does not exist in the child.
    global _buffer
    _buffer = _Buffer()


atexit.register(_flush_at_exit)
os.register_at_fork(after_in_child=_after_fork)


class _ExitHook:
    """Flushes at the exit of forked children: multiprocessing and billiard (Celery's
    prefork pool) end them with ``os._exit`` after their own exit hooks, not ``atexit``'s.

    Their ``Finalize`` registry is cleared in each new child, and their after-fork hooks
    run after that, so the hook registers itself again from there.
    """

    def __init__(self) -> None:
        self.utils: list[ModuleType] = []
        for name in ("multiprocessing.util", "billiard.util"):
            try:
                self.utils.append(importlib.import_module(name))
            except ImportError:
                continue
        for util in self.utils:
            util.register_after_fork(self, _ExitHook.register)
        self.register()

    def register(self) -> None:
        for util in self.utils:
            util.Finalize(None, _flush_at_exit, exitpriority=100)


_exit_hook = _ExitHook()
