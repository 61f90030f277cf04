"""System checks of the service API's settings (``django_onceonly.E101``...).

Registered from ``apps.py``; this module imports neither DRF nor the API's views, so the
check runs (and is harmless) in projects that do not use the API.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.utils.module_loading import import_string


@register()
def check_api_scope(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``ONCEONLY_API_SCOPE``, when set, is the dotted path of a callable."""
    path = getattr(settings, "ONCEONLY_API_SCOPE", None)
    if path is None:
        return []
    hint = "Set it to the dotted path of a function f(request) -> str, or remove it."
    if not isinstance(path, str) or "." not in path:
        return [
            Error(
                f"ONCEONLY_API_SCOPE must be a dotted path (a str), not {path!r}.",
                hint=hint,
                id="django_onceonly.E101",
            )
        ]
    try:
        function = import_string(path)
    except ImportError as exc:
        return [
            Error(
                f"ONCEONLY_API_SCOPE={path!r} cannot be imported: {exc}",
                hint=hint,
                id="django_onceonly.E101",
            )
        ]
    if not callable(function):
        return [
            Error(
                f"ONCEONLY_API_SCOPE={path!r} is not callable.",
                hint=hint,
                id="django_onceonly.E102",
            )
        ]
    return []
