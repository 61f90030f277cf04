"""Lease extension for long runs: one thread per process that keeps claims alive.

``OnceTask`` starts a :class:`Beat` for a body whose lease is shorter than its hard time
limit (or that has no time limit) and stops it when the body ends, so that only a dead
process ever loses its lease. Nothing here imports Celery.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from django.db import connections

from .exceptions import LockLost, StoreUnavailable

if TYPE_CHECKING:
    from .locks import Lock

__all__ = ["Beat", "Heartbeat", "heartbeat"]

logger = logging.getLogger("django_onceonly")


class Beat:
    """One claim whose lease the heartbeat extends, every third of its lease."""

    __slots__ = ("active", "due", "lease", "lock", "mutex")

    def __init__(self, lock: Lock, lease: float) -> None:
        self.lock = lock
        self.lease = lease
        self.due = time.monotonic() + lease / 3
        self.active = True
        # Held while extending, so that stopping a beat waits for an extend in flight and
        # no late heartbeat can shorten a lease the task itself has just set.
        self.mutex = threading.Lock()


class Heartbeat:
    """One daemon thread per process that extends the leases of long-running claims.

    Every third of its lease, each running claim's lease is pushed to a full lease from
    now through :meth:`Lock.extend`. A claim is registered when its body starts and
    removed in ``finally``, by a dictionary write each: the thread is never woken per
    task, it ticks (at most once a second), so a task that finishes within a third of
    its lease costs no write and no thread switch. The thread uses its own database
    connection and closes it when ``CONN_MAX_AGE`` says so, as a request would.
    """

    MAX_TICK = 1.0

    def __init__(self) -> None:
        self._beats: dict[int, Beat] = {}
        self._pid = 0
        self._tick = self.MAX_TICK
        self._starting = threading.Lock()

    def start(self, lock: Lock, lease: float) -> Beat:
        beat = Beat(lock, lease)
        if self._pid != os.getpid():
            self._spawn()
        self._tick = min(self._tick, lease / 3)
        self._beats[id(beat)] = beat
        return beat

    def stop(self, beat: Beat) -> None:
        with beat.mutex:
            beat.active = False
        self._beats.pop(id(beat), None)

    def _spawn(self) -> None:
        with self._starting:
            if self._pid == os.getpid():
                return
            # A forked child (prefork pool) inherits neither the thread nor the claims.
            self._beats = {}
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="onceonly-heartbeat", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            due = [beat for beat in list(self._beats.values()) if beat.due <= now]
            for beat in due:
                self._beat(beat)
            if due:
                for conn in connections.all(initialized_only=True):
                    conn.close_if_unusable_or_obsolete()

    def _beat(self, beat: Beat) -> None:
        with beat.mutex:
            if not beat.active:
                return
            beat.due = time.monotonic() + beat.lease / 3
            try:
                beat.lock.extend(beat.lease)
            except LockLost:
                beat.active = False
                logger.warning(
                    "django-onceonly: heartbeat lost key %r: its lease was taken over",
                    beat.lock.key,
                )
            except StoreUnavailable as exc:
                # Try again at the next beat; the lease still runs until then.
                logger.warning(
                    "django-onceonly: heartbeat could not extend key %r: %s", beat.lock.key, exc
                )
        if not beat.active:
            self._beats.pop(id(beat), None)


# The process's heartbeat; its thread starts with the first claim it is given.
heartbeat = Heartbeat()
