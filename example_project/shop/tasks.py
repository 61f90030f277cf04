"""The shop's email tasks: each intent's body runs once, whatever the broker delivers.

- Two messages for one intent (a double-clicked signup, a message delivered twice): the
  second waits for the first and returns its result; one email goes out.
- A transient SMTP error: ``autoretry_for`` retries, and the retry carries the claim.
- The server accepted the message but its answer never came (:class:`DeliveryOutcomeUnknown`):
  ``once_ambiguous`` turns the record ``unknown`` and nothing retries it; a person looks
  in the admin ("Sent intents") and releases it if the customer did not get it.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from django_onceonly.celery import OnceTask

from . import emails

# What every email task shares. The lease is short because a heartbeat extends it while
# the body runs: it is how long a duplicate waits before it looks again, and how long
# a claim whose worker died blocks before it turns "unknown" (ONCEONLY_AFTER_LEASE).
EMAIL_TASK: dict[str, Any] = {
    "base": OnceTask,
    "bind": True,
    "acks_late": True,
    "once_lease": 4,
    "autoretry_for": (emails.TransientSMTPError,),
    "once_ambiguous": (emails.DeliveryOutcomeUnknown,),
    "default_retry_delay": 1,
    "max_retries": 5,
}


@shared_task(name="shop.send_welcome_email", once_key="welcome_email_{user_id}", **EMAIL_TASK)
def send_welcome_email(self: OnceTask, user_id: int) -> dict[str, str]:
    return emails.send_welcome_email(user_id, idempotency_key=self.once.key)


@shared_task(name="shop.send_password_reset", once_key="pw_reset_{token_id}", **EMAIL_TASK)
def send_password_reset(self: OnceTask, token_id: int) -> dict[str, str]:
    return emails.send_password_reset(token_id, idempotency_key=self.once.key)
