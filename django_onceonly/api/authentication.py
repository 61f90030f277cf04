"""Token authentication with the ``Bearer`` keyword, as the OnceOnly SDK sends it."""

from __future__ import annotations

from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    """DRF's token authentication on ``rest_framework.authtoken`` tokens, keyword ``Bearer``.

    Clients send ``Authorization: Bearer <token>``, which is what the hosted OnceOnly
    service's SDK (``onceonly-sdk``) sends, so it works against this server unchanged.
    Add ``"rest_framework.authtoken"`` to ``INSTALLED_APPS`` and this class to
    ``REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"]``.
    """

    keyword = "Bearer"
