"""The OpenAPI description of the service API, when drf-spectacular is installed.

Everything here degrades to nothing without the ``[openapi]`` extra: the views keep
DRF's default schema and :func:`describe` leaves them as they are.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def spectacular_installed() -> bool:
    return importlib.util.find_spec("drf_spectacular") is not None


def auto_schema() -> Any:
    """The ``schema`` of the API's views: drf-spectacular's when it is installed."""
    if spectacular_installed():
        from drf_spectacular.openapi import AutoSchema

        return AutoSchema()
    from rest_framework.schemas import DefaultSchema

    return DefaultSchema()


def describe(endpoint: str) -> Callable[[F], F]:
    """Decorate a view method with its request and responses in the schema."""
    if not spectacular_installed():
        return lambda method: method
    from drf_spectacular.utils import extend_schema

    from .spectacular import ENDPOINTS

    decorator: Callable[[F], F] = extend_schema(**ENDPOINTS[endpoint]())
    return decorator
