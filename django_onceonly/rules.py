"""One definition of each rule and each choice list, imported wherever it is needed.

This module sits at the bottom of the package (it imports nothing of ours), so the
model, the stores, ``check_lock``, ``OnceTask``, the admin, the stats and the system
checks all agree on what a status is, when a lease is live and which spans are valid.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from django.db.models import TextChoices
from django.utils.translation import gettext_lazy as _


class Status(TextChoices):
    """The status of a record (``IdempotencyRecord.status``, ``Record.status``)."""

    IN_PROGRESS = "in_progress", _("in progress")
    COMPLETED = "completed", _("completed")
    FAILED = "failed", _("failed")
    UNKNOWN = "unknown", _("unknown")


# The statuses a record can be finished with.
FINISHED_STATUSES = (Status.COMPLETED.value, Status.FAILED.value, Status.UNKNOWN.value)
# The statuses in which a record still belongs to its owner token: running, or turned
# ``unknown`` by a ``"hold"`` while its owner may still report the outcome.
OWNED_STATUSES = (Status.IN_PROGRESS.value, Status.UNKNOWN.value)

# -- option choices ---------------------------------------------------------------------

AFTER_LEASE_CHOICES = ("reclaim", "hold")
ON_STORE_ERROR_CHOICES = ("raise", "run")
# What leaving a ``with check_lock()`` block (or a task body) by an exception does.
ON_ERROR_CHOICES = ("release", "fail")
# ``@once``: what a call does while another holds the key.
ONCE_ON_IN_PROGRESS_CHOICES = ("raise", "skip")
# ``OnceTask``: the same, plus waiting as a Celery retry.
TASK_ON_IN_PROGRESS_CHOICES = ("retry", "skip", "raise")
TASK_ON_DUPLICATE_CHOICES = ("return", "raise")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` naming ``name``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, not {value!r}")
    return value


# -- spans of time ----------------------------------------------------------------------

# The longest ttl or lease: 100 years. A record's times must fit the databases' datetime
# columns (year 9999) and RedisStore's microsecond timestamps, which Lua reads as doubles
# (exact up to 2**53 us, the year 2255). "Forever" is ``ONCEONLY_TTL = None``, never a
# huge number.
MAX_SECONDS = 100 * 365 * 86_400
# Stores keep times to the microsecond: a shorter span would be stored as none at all.
MIN_SECONDS = 1e-6


def seconds(value: Any, name: str) -> float:
    """``value`` (seconds or a ``timedelta``) as a float, or ``ValueError`` naming ``name``.

    Valid: finite, at least :data:`MIN_SECONDS` (a microsecond) and at most
    :data:`MAX_SECONDS`. Booleans, NaN, infinity, zero, negatives, spans under a
    microsecond and ``timedelta.max`` are refused before anything is written.
    """
    number = value.total_seconds() if isinstance(value, dt.timedelta) else value
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, float))
        or not math.isfinite(number)
        or not 0 < number <= MAX_SECONDS
    ):
        raise ValueError(
            f"{name} must be a positive number of seconds or a timedelta, at most "
            f"{MAX_SECONDS} (100 years), not {value!r}"
        )
    if number < MIN_SECONDS:
        raise ValueError(
            f"{name} must be at least one microsecond (stores keep times to the "
            f"microsecond), not {value!r}"
        )
    return float(number)


def optional_seconds(value: Any, name: str) -> float | None:
    """:func:`seconds`, with ``None`` passed through."""
    return None if value is None else seconds(value, name)


# -- the lease --------------------------------------------------------------------------


def lease_is_stale(status: str, lease_expires_at: dt.datetime | None, now: dt.datetime) -> bool:
    """True when an ``in_progress`` claim's lease has ended: it is no longer trusted."""
    return status == Status.IN_PROGRESS and lease_expires_at is not None and lease_expires_at <= now


def lease_is_live(status: str, lease_expires_at: dt.datetime | None, now: dt.datetime) -> bool:
    """True when an ``in_progress`` claim is still trusted (its owner may be running)."""
    return status == Status.IN_PROGRESS and lease_expires_at is not None and lease_expires_at > now
