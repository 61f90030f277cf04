"""drf-spectacular's side of the schema: responses per endpoint, auth, the schema view.

Imported only when drf-spectacular is installed (see :mod:`.openapi`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import IsAuthenticated

from . import serializers as s


class BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "django_onceonly.api.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A DRF auth token."}


def _common() -> dict[int, Any]:
    return {
        400: OpenApiResponse(
            OpenApiTypes.OBJECT,
            description="Bad input: field errors ({field: [message, ...]}) or "
            "{detail} for a body that is not JSON. Nothing was written.",
        ),
        401: OpenApiResponse(OpenApiTypes.OBJECT, description="Not authenticated."),
        403: OpenApiResponse(OpenApiTypes.OBJECT, description="Not allowed."),
        503: OpenApiResponse(s.ErrorResponse, description="The store is unavailable."),
    }


def _owner(ok: Any, description: str) -> dict[int, Any]:
    return {
        200: OpenApiResponse(ok, description=description),
        404: OpenApiResponse(
            s.ErrorResponse, description="No such key in the caller's scope (or it expired)."
        ),
        409: OpenApiResponse(
            s.ErrorResponse, description="The token no longer owns the key. Nothing written."
        ),
        **_common(),
    }


def _check_lock() -> dict[str, Any]:
    answer = PolymorphicProxySerializer(
        component_name="CheckLockResponse",
        serializers={"locked": s.LockedResponse, "duplicate": s.DuplicateResponse},
        resource_type_field_name="status",
    )
    return {
        "request": s.CheckLockRequest,
        "responses": {
            200: OpenApiResponse(answer, description="`locked` or `duplicate`."),
            422: OpenApiResponse(
                s.ErrorResponse, description="The key was claimed with another fingerprint."
            ),
            **_common(),
        },
        "summary": "Claim a key",
    }


def _complete() -> dict[str, Any]:
    responses = _owner(s.FinishedResponse, "Completed.")
    responses[413] = OpenApiResponse(
        s.TooLargeResponse,
        description="The result is over ONCEONLY_MAX_RESULT_BYTES; the claim is still yours.",
    )
    return {"request": s.CompleteRequest, "responses": responses, "summary": "Store the result"}


def _release() -> dict[str, Any]:
    return {
        "request": s.ReleaseRequest,
        "responses": _owner(s.ReleasedResponse, "Released."),
        "summary": "Give the key back",
    }


def _fail() -> dict[str, Any]:
    return {
        "request": s.FailRequest,
        "responses": _owner(s.FinishedResponse, "Failed (or unknown)."),
        "summary": "Store a final failure",
    }


def _lock_detail() -> dict[str, Any]:
    responses = _owner(s.RecordResponse, "The record.")
    del responses[409]
    return {"responses": responses, "summary": "Read a key's record"}


ENDPOINTS: dict[str, Callable[[], dict[str, Any]]] = {
    "check_lock": _check_lock,
    "complete": _complete,
    "release": _release,
    "fail": _fail,
    "lock_detail": _lock_detail,
}


def only_this_api(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """Preprocessing hook: the schema describes this API, not the project's other views."""
    return [
        endpoint
        for endpoint in endpoints
        if getattr(getattr(endpoint[3], "cls", None), "__module__", "")
        == "django_onceonly.api.views"
    ]


class SchemaView(SpectacularAPIView):
    """The service API's OpenAPI 3 schema (YAML, or JSON with ``?format=json``)."""

    permission_classes = [IsAuthenticated]
    custom_settings = {
        "TITLE": "django-onceonly service API",
        "DESCRIPTION": "Claim a key once, store the first result, answer every retry with it.",
        "VERSION": "1",
        "ENUM_NAME_OVERRIDES": {"RecordStatusEnum": "django_onceonly.rules.Status"},
        "PREPROCESSING_HOOKS": ["django_onceonly.api.spectacular.only_this_api"],
    }
