from __future__ import annotations

from django.conf import settings
from django.db import models


class Profile(models.Model):
    """What many projects have: a flag that says the welcome email went out."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    welcome_email_sent = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"profile of {self.user}"
