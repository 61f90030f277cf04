"""The scope of an API caller: its principal, or what ``ONCEONLY_API_SCOPE`` says."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from ..conf import conf
from ..exceptions import InvalidKey
from ..keys import validate_scope

ScopeFunction = Callable[[Any], str]


def principal_scope(request: Any) -> str:
    """The default scope: ``"user:<pk>"`` of the authenticated user.

    Two API clients with two users never share a key, and one cannot tell whether the
    other's key exists.
    """
    return f"user:{request.user.pk}"


@functools.cache
def _load(path: str) -> ScopeFunction:
    function: ScopeFunction = import_string(path)
    return function


def scope_function() -> ScopeFunction:
    """The function that gives a request's scope, ``ONCEONLY_API_SCOPE`` or the default."""
    path = conf.ONCEONLY_API_SCOPE
    return principal_scope if path is None else _load(path)


def api_scope(request: Any) -> str:
    """The scope of ``request``'s keys: every record the caller touches lives in it."""
    scope = scope_function()(request)
    try:
        return validate_scope(scope)
    except InvalidKey as exc:
        # The function is the project's code, not the caller's input: a server error.
        raise ImproperlyConfigured(f"ONCEONLY_API_SCOPE returned an invalid scope: {exc}") from exc
