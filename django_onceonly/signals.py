"""Signals sent by every lock, whatever the store.

Each is sent with ``sender=Lock`` (the class) and ``lock=`` the
:class:`~django_onceonly.locks.Lock` concerned:

- ``lock_acquired``: a caller now owns the key.
- ``duplicate_blocked``: a caller was told ``duplicate``; ``lock.record_status`` says why.
- ``lock_completed``: the owner stored its result (``result=``).
- ``lock_released``: the owner gave the key back.
- ``lock_failed``: the owner stored a final failure (``error=``, ``status=`` is ``failed``
  or ``unknown``).
- ``lease_expired``: a claim found a stale lease; ``action=`` is ``"reclaimed"`` (the
  caller took it over) or ``"held"`` (the record turned ``unknown``).
"""

from __future__ import annotations

from django.dispatch import Signal

lock_acquired = Signal()
duplicate_blocked = Signal()
lock_completed = Signal()
lock_released = Signal()
lock_failed = Signal()
lease_expired = Signal()
