"""The endpoints: check-lock, complete, release, fail and the record, over ``check_lock``.

Each view authenticates with DRF's configured classes, derives the caller's scope
(:mod:`.scope`) and then does what the in-process API does: ``check_lock`` for a
claim, a ``Lock`` rebuilt from the owner's token (:mod:`.claims`) for the rest. The
package's exceptions become status codes in :meth:`ServiceView.handle_exception`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from django.utils import timezone
from rest_framework import status
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer
from rest_framework.views import APIView

from ..exceptions import (
    FingerprintMismatch,
    InvalidKey,
    InvalidResult,
    LockLost,
    ResultTooLarge,
    StoreUnavailable,
)
from ..locks import Lock, check_lock
from ..rules import Status, lease_is_live
from ..stores import Record
from . import serializers
from .claims import NotFound, issue_token, live_record, lost_or_absent, owned_lock
from .openapi import auto_schema, describe
from .scope import api_scope

logger = logging.getLogger("django_onceonly")


class StrictJSONParser(JSONParser):
    """DRF's JSON parser, with nesting too deep for Python a 400 instead of a 500."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the document nests too deeply") from exc


def _seconds_until(when: dt.datetime | None, now: dt.datetime) -> int | None:
    if when is None:
        return None
    return max(0, math.ceil((when - now).total_seconds()))


def _error(detail: str, code: str, http_status: int, **extra: Any) -> Response:
    return Response({"detail": detail, "code": code, **extra}, status=http_status)


class ServiceView(APIView):
    """What every endpoint shares: authentication, JSON only, errors as status codes."""

    permission_classes = [IsAuthenticated]
    parser_classes = [StrictJSONParser]
    renderer_classes = [JSONRenderer]
    schema = auto_schema()

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, NotFound):
            # Absent, expired and another scope's key look the same: nothing to reveal.
            return _error("No such key.", "not_found", status.HTTP_404_NOT_FOUND)
        if isinstance(exc, LockLost):
            return _error(str(exc), "lock_lost", status.HTTP_409_CONFLICT)
        if isinstance(exc, FingerprintMismatch):
            detail = (
                f"key {exc.key!r} was first used with a different fingerprint; "
                "the same key must always carry the same payload"
            )
            return _error(detail, "fingerprint_mismatch", status.HTTP_422_UNPROCESSABLE_ENTITY)
        if isinstance(exc, ResultTooLarge):
            return _error(
                str(exc),
                "result_too_large",
                status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                size=exc.size,
                limit=exc.limit,
            )
        if isinstance(exc, InvalidResult):
            return Response({"result": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        if isinstance(exc, InvalidKey):
            return Response({"key": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        if isinstance(exc, StoreUnavailable):
            # The cause (hosts, ports, driver messages) is for the server's log only.
            logger.warning("django-onceonly API: %s", exc)
            response = _error(
                "The store is unavailable; nothing was written. Retry later.",
                "store_unavailable",
                status.HTTP_503_SERVICE_UNAVAILABLE,
            )
            response["Retry-After"] = "1"
            return response
        return super().handle_exception(exc)

    def validated(self, serializer_class: type[Serializer[Any]]) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        return data


class CheckLockView(ServiceView):
    """Claim a key: ``locked`` (go ahead, keep the token) or ``duplicate`` (skip the work)."""

    @describe("check_lock")
    def post(self, request: Request) -> Response:
        data = self.validated(serializers.CheckLockRequest)
        scope = api_scope(request)
        ttl = data.get("ttl")
        lease = data.get("lease")
        if lease is None and ttl is not None:
            # The hosted service's ttl is how long a check-lock blocks the key, completed
            # or not: its SDK never completes. The same here, unless a lease is given.
            lease = ttl
        lock = check_lock(
            data["key"],
            scope=scope,
            ttl=ttl,
            lease=lease,
            fingerprint=data.get("fingerprint"),
            metadata=data.get("metadata"),
        )
        if lock.unprotected:
            # ONCEONLY_ON_STORE_ERROR="run" lets in-process code run unprotected; a
            # remote caller is told the truth and decides for itself.
            raise StoreUnavailable("the store could not be reached")
        return Response(self.answer(lock))

    @staticmethod
    def answer(lock: Lock) -> dict[str, Any]:
        now = timezone.now()
        if lock.locked:
            return {
                "status": "locked",
                "key": lock.key,
                "token": issue_token(lock),
                "lease_expires_at": lock.lease_expires_at,
                "expires_at": lock.expires_at,
                "ttl": _seconds_until(lock.lease_expires_at, now),
                "first_seen_at": lock.created_at,
            }
        # A duplicate's answer never carries the owner's token.
        blocked_until = (
            lock.lease_expires_at if lock.record_status == Status.IN_PROGRESS else lock.expires_at
        )
        return {
            "status": "duplicate",
            "key": lock.key,
            "record_status": lock.record_status,
            "result": lock.result,
            "error": lock.error,
            "created_at": lock.created_at,
            "completed_at": lock.completed_at,
            "expires_at": lock.expires_at,
            "retry_after": lock.retry_after,
            "ttl": _seconds_until(blocked_until, now),
            "first_seen_at": lock.created_at,
        }


def _finished(lock: Lock) -> dict[str, Any]:
    return {
        "key": lock.key,
        "status": lock.record_status,
        "completed_at": lock.completed_at,
        "expires_at": lock.expires_at,
    }


class CompleteView(ServiceView):
    """Store the owner's result: later check-locks are duplicates that carry it."""

    @describe("complete")
    def post(self, request: Request) -> Response:
        data = self.validated(serializers.CompleteRequest)
        scope = api_scope(request)
        lock = owned_lock(scope, data["key"], data["token"])
        try:
            lock.complete(data["result"])
        except LockLost as exc:
            raise lost_or_absent(scope, data["key"], exc) from exc
        return Response(_finished(lock))


class ReleaseView(ServiceView):
    """Give the key back so that the next check-lock claims it."""

    @describe("release")
    def post(self, request: Request) -> Response:
        data = self.validated(serializers.ReleaseRequest)
        scope = api_scope(request)
        lock = owned_lock(scope, data["key"], data["token"])
        try:
            lock.release()
        except LockLost as exc:
            raise lost_or_absent(scope, data["key"], exc) from exc
        return Response({"key": lock.key, "status": "released"})


class FailView(ServiceView):
    """Store a final failure (``failed``, or ``unknown`` with ``outcome_unknown``)."""

    @describe("fail")
    def post(self, request: Request) -> Response:
        data = self.validated(serializers.FailRequest)
        scope = api_scope(request)
        lock = owned_lock(scope, data["key"], data["token"])
        try:
            lock.fail(data["error"], outcome_unknown=data["outcome_unknown"])
        except LockLost as exc:
            raise lost_or_absent(scope, data["key"], exc) from exc
        return Response(_finished(lock))


def record_answer(record: Record, now: dt.datetime) -> dict[str, Any]:
    retry_after = None
    if record.lease_expires_at and lease_is_live(record.status, record.lease_expires_at, now):
        retry_after = max(1, math.ceil((record.lease_expires_at - now).total_seconds()))
    return {
        "key": record.key,
        "status": record.status,
        "result": record.result,
        "error": record.error,
        "fingerprint": record.fingerprint,
        "metadata": record.metadata,
        "task_name": record.task_name,
        "task_id": record.task_id,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "completed_at": record.completed_at,
        "lease_expires_at": record.lease_expires_at,
        "expires_at": record.expires_at,
        "retry_after": retry_after,
        "duplicates_blocked": record.duplicates_blocked,
        "last_duplicate_at": record.last_duplicate_at,
    }


class LockDetailView(ServiceView):
    """The caller's record for a key; never the owner token."""

    @describe("lock_detail")
    def get(self, request: Request, key: str) -> Response:
        try:
            serializers.KeyField().run_validation(key)
        except ValidationError as exc:
            return Response({"key": exc.detail}, status=status.HTTP_400_BAD_REQUEST)
        record = live_record(api_scope(request), key)
        return Response(record_answer(record, timezone.now()))
