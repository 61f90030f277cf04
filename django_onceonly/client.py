"""An HTTP client of the service API, for code that runs outside the Django project.

Needs the ``[client]`` extra (httpx). It does not need Django settings: it imports only
the package's exceptions. It stays one module past the house's 400 lines: the sync and
async clients and their handles mirror each other line for line.

    from django_onceonly.client import OnceOnlyClient

    with OnceOnlyClient("https://app.example.com/onceonly", token) as client:
        with client.check_lock(f"welcome_email_{user_id}") as lock:
            if lock.duplicate:
                return lock.result
            lock.complete(send_welcome_email(user_id))

The handle has the names of the in-process ``Lock`` (``status``, ``locked``,
``duplicate``, ``record_status``, ``result``, ``retry_after``, ``key``, ``token``,
``complete``, ``release``, ``fail``, the context manager) and the answers become the
package's exceptions: 409 ``LockLost``, 422 ``FingerprintMismatch``, 413
``ResultTooLarge``, 400 ``InvalidKey``/``InvalidResult``/``ValueError``, 5xx and
network errors or timeouts ``StoreUnavailable``. :class:`AsyncOnceOnlyClient` is the
same for ``async def`` code (``await client.check_lock(...)``, ``await
lock.acomplete(...)``, ``async with``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from .exceptions import (
    FingerprintMismatch,
    InvalidKey,
    InvalidResult,
    LockLost,
    OnceOnlyError,
    ResultTooLarge,
    StoreUnavailable,
)

__all__ = ["ApiError", "AsyncOnceOnlyClient", "AsyncRemoteLock", "OnceOnlyClient", "RemoteLock"]

logger = logging.getLogger("django_onceonly.client")

DEFAULT_TIMEOUT = 10.0


class ApiError(OnceOnlyError):
    """An answer the client has no better exception for (401, 403, an unexpected code)."""

    def __init__(self, status_code: int, body: Any) -> None:
        self.status_code = status_code
        self.body = body
        detail = body.get("detail") if isinstance(body, dict) else body
        self.message = f"HTTP {status_code}: {detail}"
        super().__init__(status_code, body)


def _time(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else None


def _encode(body: dict[str, Any]) -> bytes:
    try:
        return json.dumps(body, allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidResult(f"cannot be sent: it is not JSON-serialisable ({exc})") from exc


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _raise_for(response: httpx.Response, key: str, *, absent_is_lost: bool = True) -> None:
    """Turn an answer other than 200 into the package's exception."""
    code = response.status_code
    if code == 200:
        return
    body = _body(response)
    detail = body.get("detail", "") if isinstance(body, dict) else str(body)
    if code >= 500:
        raise StoreUnavailable(f"the onceonly service answered {code}: {detail or body}")
    if code == 400 and isinstance(body, dict):
        messages = "; ".join(
            f"{field}: {' '.join(map(str, errors if isinstance(errors, list) else [errors]))}"
            for field, errors in body.items()
        )
        if "key" in body:
            raise InvalidKey(messages)
        if "result" in body:
            raise InvalidResult(messages)
        raise ValueError(messages)
    if code == 409 or (code == 404 and absent_is_lost):
        raise LockLost(f"cannot act on key {key!r}: {detail}")
    if code == 413 and isinstance(body, dict):
        raise ResultTooLarge(int(body.get("size", 0)), int(body.get("limit", 0)))
    if code == 422:
        raise FingerprintMismatch(key)
    raise ApiError(code, body)


class _Endpoints:
    """URLs and headers shared by the sync and the async client."""

    def __init__(self, base_url: str, token: str) -> None:
        base = base_url.rstrip("/")
        # The OnceOnly SDK's base URLs end in /v1; the API's mount point does not.
        self.base = base.removesuffix("/v1")
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def url(self, endpoint: str) -> str:
        return f"{self.base}/v1/{endpoint}"

    def lock_url(self, key: str) -> str:
        return self.url("locks/" + quote(key, safe=""))

    @staticmethod
    def check_lock_body(
        key: str,
        ttl: float | dt.timedelta | None,
        lease: float | dt.timedelta | None,
        fingerprint: str | None,
        metadata: dict[str, Any] | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"key": key}
        for name, value in (("ttl", ttl), ("lease", lease)):
            if isinstance(value, dt.timedelta):
                value = value.total_seconds()
            if value is not None:
                body[name] = value
        if fingerprint is not None:
            body["fingerprint"] = fingerprint
        if metadata is not None:
            body["metadata"] = metadata
        return body


class _LockState:
    """The fields of a check-lock answer, under the in-process ``Lock``'s names."""

    def __init__(self, body: dict[str, Any], *, scope: str, on_error: str) -> None:
        self.status: str = body["status"]
        self.key: str = body["key"]
        self.scope = scope
        self.on_error = on_error
        self.token: str | None = body.get("token")
        self.record_status: str | None = body.get("record_status")
        self.result: Any = body.get("result")
        self.error: str = body.get("error") or ""
        self.retry_after: int | None = body.get("retry_after")
        self.ttl: int | None = body.get("ttl")
        self.created_at = _time(body.get("created_at") or body.get("first_seen_at"))
        self.completed_at = _time(body.get("completed_at"))
        self.lease_expires_at = _time(body.get("lease_expires_at"))
        self.expires_at = _time(body.get("expires_at"))
        self._finished = False

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.status} key={self.key!r} "
            f"record_status={self.record_status!r}>"
        )

    @property
    def locked(self) -> bool:
        return self.status == "locked"

    @property
    def duplicate(self) -> bool:
        return self.status == "duplicate"

    def _owner_body(self, action: str) -> dict[str, Any]:
        if not self.locked:
            raise LockLost(
                f"cannot {action} key {self.key!r}: this lock is a duplicate, not the owner"
            )
        if self._finished:
            raise LockLost(f"cannot {action} key {self.key!r}: this lock has already finished")
        return {"key": self.key, "token": self.token}

    def _finished_with(self, answer: dict[str, Any], result: Any = None, error: str = "") -> None:
        self._finished = True
        status = answer.get("status")
        self.record_status = None if status == "released" else status
        self.result = result
        self.error = error
        self.completed_at = _time(answer.get("completed_at"))
        self.expires_at = _time(answer.get("expires_at"))
        self.lease_expires_at = None

    def _cleanup_failed(self) -> None:
        logger.exception(
            "django-onceonly client: could not %s key %r after an error", self.on_error, self.key
        )


class RemoteLock(_LockState):
    """The answer to :meth:`OnceOnlyClient.check_lock`; methods as on the in-process ``Lock``."""

    def __init__(self, client: OnceOnlyClient, body: dict[str, Any], *, on_error: str) -> None:
        super().__init__(body, scope="", on_error=on_error)
        self._client = client

    def complete(self, result: Any = None) -> None:
        """Store ``result``; ``ResultTooLarge``/``InvalidResult`` leave the claim yours."""
        body = self._owner_body("complete") | {"result": result}
        answer = self._client._post("complete", body, self.key)
        self._finished_with(answer, result=result)

    def release(self) -> None:
        answer = self._client._post("release", self._owner_body("release"), self.key)
        self._finished_with(answer)

    def fail(self, error: object, *, outcome_unknown: bool = False) -> None:
        text = (
            str(error)
            if not isinstance(error, BaseException)
            else f"{type(error).__name__}: {error}"
        )
        body = self._owner_body("fail") | {"error": text, "outcome_unknown": outcome_unknown}
        answer = self._client._post("fail", body, self.key)
        self._finished_with(answer, error=text)

    def __enter__(self) -> RemoteLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.locked or self._finished:
            return
        if exc is None:
            self.complete(None)
            return
        try:
            if self.on_error == "fail":
                self.fail(exc)
            else:
                self.release()
        except OnceOnlyError:
            self._cleanup_failed()


class AsyncRemoteLock(_LockState):
    """The answer to :meth:`AsyncOnceOnlyClient.check_lock`: ``await lock.acomplete(...)``."""

    def __init__(self, client: AsyncOnceOnlyClient, body: dict[str, Any], *, on_error: str) -> None:
        super().__init__(body, scope="", on_error=on_error)
        self._client = client

    async def acomplete(self, result: Any = None) -> None:
        body = self._owner_body("complete") | {"result": result}
        answer = await self._client._post("complete", body, self.key)
        self._finished_with(answer, result=result)

    async def arelease(self) -> None:
        answer = await self._client._post("release", self._owner_body("release"), self.key)
        self._finished_with(answer)

    async def afail(self, error: object, *, outcome_unknown: bool = False) -> None:
        text = (
            str(error)
            if not isinstance(error, BaseException)
            else f"{type(error).__name__}: {error}"
        )
        body = self._owner_body("fail") | {"error": text, "outcome_unknown": outcome_unknown}
        answer = await self._client._post("fail", body, self.key)
        self._finished_with(answer, error=text)

    async def __aenter__(self) -> AsyncRemoteLock:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.locked or self._finished:
            return
        if exc is None:
            await self.acomplete(None)
            return
        try:
            if self.on_error == "fail":
                await self.afail(exc)
            else:
                await self.arelease()
        except OnceOnlyError:
            self._cleanup_failed()


class OnceOnlyClient:
    """A client of the service API mounted at ``base_url``, authenticated by ``token``.

    ``base_url`` is where ``django_onceonly.api.urls`` is included
    (``https://app.example.com/onceonly``); a URL ending in ``/v1``, as the OnceOnly SDK
    takes it, works too. ``timeout`` is in seconds. Use it as a context manager, or
    call :meth:`close`, to close its connections.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._endpoints = _Endpoints(base_url, token)
        self._http = httpx.Client(
            headers=self._endpoints.headers, timeout=timeout, transport=transport
        )

    def check_lock(
        self,
        key: str,
        *,
        ttl: float | dt.timedelta | None = None,
        lease: float | dt.timedelta | None = None,
        fingerprint: str | None = None,
        metadata: dict[str, Any] | None = None,
        on_error: str = "release",
    ) -> RemoteLock:
        """Claim ``key``: ``lock.locked`` (go ahead) or ``lock.duplicate`` (skip the work)."""
        body = _Endpoints.check_lock_body(key, ttl, lease, fingerprint, metadata)
        return RemoteLock(self, self._post("check-lock", body, key), on_error=on_error)

    def get_lock(self, key: str) -> dict[str, Any] | None:
        """The caller's record for ``key`` as the API shows it, or ``None`` when absent."""
        try:
            response = self._http.get(self._endpoints.lock_url(key))
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"the onceonly service could not be reached: {exc!r}") from exc
        if response.status_code == 404:
            return None
        _raise_for(response, key)
        record: dict[str, Any] = response.json()
        return record

    def _post(self, endpoint: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        content = _encode(body)
        try:
            response = self._http.post(self._endpoints.url(endpoint), content=content)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"the onceonly service could not be reached: {exc!r}") from exc
        _raise_for(response, key)
        answer: dict[str, Any] = response.json()
        return answer

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OnceOnlyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncOnceOnlyClient:
    """:class:`OnceOnlyClient` for ``async def`` code; ``await`` its methods."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._endpoints = _Endpoints(base_url, token)
        self._http = httpx.AsyncClient(
            headers=self._endpoints.headers, timeout=timeout, transport=transport
        )

    async def check_lock(
        self,
        key: str,
        *,
        ttl: float | dt.timedelta | None = None,
        lease: float | dt.timedelta | None = None,
        fingerprint: str | None = None,
        metadata: dict[str, Any] | None = None,
        on_error: str = "release",
    ) -> AsyncRemoteLock:
        body = _Endpoints.check_lock_body(key, ttl, lease, fingerprint, metadata)
        return AsyncRemoteLock(self, await self._post("check-lock", body, key), on_error=on_error)

    async def get_lock(self, key: str) -> dict[str, Any] | None:
        try:
            response = await self._http.get(self._endpoints.lock_url(key))
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"the onceonly service could not be reached: {exc!r}") from exc
        if response.status_code == 404:
            return None
        _raise_for(response, key)
        record: dict[str, Any] = response.json()
        return record

    async def _post(self, endpoint: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        content = _encode(body)
        try:
            response = await self._http.post(self._endpoints.url(endpoint), content=content)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"the onceonly service could not be reached: {exc!r}") from exc
        _raise_for(response, key)
        answer: dict[str, Any] = response.json()
        return answer

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncOnceOnlyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
