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
    from drf_spectacular.openapi import AutoSchema
    from drf_spectacular.utils import extend_schema

    from .spectacular import ENDPOINTS

    def decorate(method: F) -> F:
        # extend_schema builds on the method's own schema class, else on the project's
        # DEFAULT_SCHEMA_CLASS, which need not be drf-spectacular's: name it.
        setattr(method, "schema", AutoSchema)  # noqa: B010
        decorated: F = extend_schema(**ENDPOINTS[endpoint]())(method)
        return decorated

    return decorate
