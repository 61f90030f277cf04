"""The shop's emails, sent through Django's SMTP backend, and what a failure means.

An SMTP error is one of three things, and a task must treat each differently:

- :class:`TransientSMTPError`: the server refused the message for now (a 4xx answer) or
  could not be reached. Nothing was sent; retrying is safe.
- :class:`DeliveryOutcomeUnknown`: the connection timed out or broke while the server
  had the message. It may have accepted it already; the sender cannot know, and a retry
  may send it twice.
- anything else (a 5xx answer): permanent; retrying will not help.
"""

from __future__ import annotations

import smtplib

from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, make_msgid

from .models import PasswordResetToken

WELCOME_SUBJECT = "Welcome to the shop"
RESET_SUBJECT = "Reset your password"


class TransientSMTPError(Exception):
    """Nothing was sent; try again later."""


class DeliveryOutcomeUnknown(Exception):
    """The server may or may not have accepted the message."""


def deliver(message: EmailMessage) -> str:
    """Send ``message``; return its Message-ID, or raise one of the errors above."""
    message.extra_headers.setdefault("Message-ID", make_msgid(domain="shop.example"))
    # The order matters: every smtplib error is an OSError, SMTPConnectError an answer.
    try:
        message.send()
    except smtplib.SMTPConnectError as exc:
        raise TransientSMTPError(f"cannot connect: {exc}") from exc
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise TransientSMTPError(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
        raise
    except smtplib.SMTPServerDisconnected as exc:
        # Once connected, smtplib turns a timeout or a broken connection into
        # "disconnected", whichever command it was waiting on. The answer to the end of
        # the message may be the one lost: for an email, "maybe sent" is the safe reading.
        raise DeliveryOutcomeUnknown(str(exc)) from exc
    except smtplib.SMTPException:
        raise
    except OSError as exc:
        # Refused or timed out while connecting: nothing was sent.
        raise TransientSMTPError(f"cannot connect: {exc}") from exc
    return str(message.extra_headers["Message-ID"])


def send_welcome_email(user_id: int, *, idempotency_key: str = "") -> dict[str, str]:
    user = get_user_model().objects.get(pk=user_id)
    message = EmailMessage(
        subject=WELCOME_SUBJECT,
        body=f"Hello {user.get_username()}, thanks for signing up.",
        to=[user.email],
    )
    if idempotency_key:
        # What a provider's API would take to drop a repeat; plain SMTP ignores it.
        message.extra_headers["X-Idempotency-Key"] = idempotency_key
    return {"message_id": deliver(message), "to": user.email}


def send_password_reset(token_id: int, *, idempotency_key: str = "") -> dict[str, str]:
    reset = PasswordResetToken.objects.select_related("user").get(pk=token_id)
    message = EmailMessage(
        subject=RESET_SUBJECT,
        body=f"Reset your password: http://127.0.0.1:8000/reset/{reset.token}/",
        to=[reset.user.email],
    )
    if idempotency_key:
        message.extra_headers["X-Idempotency-Key"] = idempotency_key
    return {"message_id": deliver(message), "to": reset.user.email}
