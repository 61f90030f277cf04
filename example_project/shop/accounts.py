"""Signing up and asking for a password reset: what the views (and the demo) call."""

from __future__ import annotations

import importlib
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils.module_loading import import_string

from .models import PasswordResetToken


def email_tasks() -> Any:
    """The tasks that send the shop's emails (``SHOP_EMAIL_TASKS``, read per call).

    A module (``"shop.tasks"``) or an object in one (``"shop.demo.variants.plain"``).
    """
    path = settings.SHOP_EMAIL_TASKS
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        return import_string(path)


def sign_up(email: str) -> tuple[AbstractBaseUser, bool]:
    """Create the account for ``email`` (or find it) and send the welcome email.

    Signing up twice with one address answers as the first time did, so that the form
    tells nobody which addresses have accounts, and a double click is harmless: the
    second welcome email has the same intent (``welcome_email_{user_id}``) and is not sent.
    """
    email = email.strip().lower()
    with transaction.atomic():
        user, created = get_user_model().objects.get_or_create(
            username=email, defaults={"email": email}
        )
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        # Published once the account is committed: a worker must be able to read it.
        transaction.on_commit(lambda: email_tasks().send_welcome_email.delay(user.pk))
    return user, created


def request_password_reset(user: AbstractBaseUser) -> PasswordResetToken:
    """A new reset token, and its email (one email per token: ``pw_reset_{token_id}``)."""
    with transaction.atomic():
        reset = PasswordResetToken.objects.create(user=user)
        transaction.on_commit(lambda: email_tasks().send_password_reset.delay(reset.pk))
    return reset
