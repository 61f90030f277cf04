"""Sending the welcome email: the plain function and two ways to guard it against retries."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.mail import send_mail

from django_onceonly import check_lock

from .models import Profile


def send_welcome_email(user_id: int) -> None:
    """Hand the welcome email to the provider. Once it has gone, it cannot be taken back."""
    user = get_user_model().objects.get(pk=user_id)
    send_mail(
        subject="Welcome to the shop",
        message=f"Hello {user.get_username()}, thanks for signing up.",
        from_email=None,
        recipient_list=[user.email],
    )


def send_welcome_email_naive(user_id: int) -> bool:
    """Check a flag, send, set the flag: two retries can both pass the check."""
    if Profile.objects.filter(user_id=user_id, welcome_email_sent=True).exists():
        return False
    send_welcome_email(user_id)
    Profile.objects.filter(user_id=user_id).update(welcome_email_sent=True)
    return True


def send_welcome_email_once(user_id: int) -> bool:
    """Claim the intent first; if status is duplicate, skip the send."""
    with check_lock(f"welcome_email_{user_id}") as lock:
        if lock.duplicate:
            return False
        send_welcome_email(user_id)
    return True
