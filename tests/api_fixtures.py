"""Users with API tokens, for the service API's tests (in-process and live)."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token


def make_token(name: str | None = None) -> tuple[str, str]:
    """A new user and its token: ``(token key, the user's scope under the default rule)``."""
    user = get_user_model().objects.create_user(username=name or f"client-{uuid.uuid4().hex[:8]}")
    token = Token.objects.create(user=user)
    return token.key, f"user:{user.pk}"
