"""The shop's two email tasks written the other ways the demo compares them with.

- ``plain``: plain Celery tasks, retrying on every SMTP error, as most projects start.
- ``at_least_once``: ``OnceTask`` with timeouts retried like any other error (no
  ``once_ambiguous``): a timeout releases the claim and the retry sends again.

The shop's own tasks (``shop.tasks``) are the third way: ``OnceTask`` with
``once_ambiguous``. The bodies are the same functions in every variant.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from celery import Task, shared_task

from shop import emails
from shop.tasks import EMAIL_TASK

RETRY_EVERY_SMTP_ERROR = (emails.TransientSMTPError, emails.DeliveryOutcomeUnknown)

PLAIN: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": RETRY_EVERY_SMTP_ERROR,
    "default_retry_delay": 1,
    "max_retries": 5,
}
AT_LEAST_ONCE: dict[str, Any] = {
    **EMAIL_TASK,
    "autoretry_for": RETRY_EVERY_SMTP_ERROR,
    "once_ambiguous": (),
    # Its own scope, so that the admin tells its records from the shop's.
    "once_scope": "at-least-once",
}


@shared_task(name="demo.plain.send_welcome_email", **PLAIN)
def plain_send_welcome_email(self: Task[Any, Any], user_id: int) -> dict[str, str]:
    return emails.send_welcome_email(user_id)


@shared_task(name="demo.plain.send_password_reset", **PLAIN)
def plain_send_password_reset(self: Task[Any, Any], token_id: int) -> dict[str, str]:
    return emails.send_password_reset(token_id)


@shared_task(
    name="demo.at_least_once.send_welcome_email",
    once_key="welcome_email_{user_id}",
    **AT_LEAST_ONCE,
)
def at_least_once_send_welcome_email(self: Any, user_id: int) -> dict[str, str]:
    return emails.send_welcome_email(user_id, idempotency_key=self.once.key)


@shared_task(
    name="demo.at_least_once.send_password_reset",
    once_key="pw_reset_{token_id}",
    **AT_LEAST_ONCE,
)
def at_least_once_send_password_reset(self: Any, token_id: int) -> dict[str, str]:
    return emails.send_password_reset(token_id, idempotency_key=self.once.key)


# What SHOP_EMAIL_TASKS names for each variant.
plain = SimpleNamespace(
    send_welcome_email=plain_send_welcome_email,
    send_password_reset=plain_send_password_reset,
)
at_least_once = SimpleNamespace(
    send_welcome_email=at_least_once_send_welcome_email,
    send_password_reset=at_least_once_send_password_reset,
)
