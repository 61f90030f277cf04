"""``Idempotency-Key`` on your own views: :func:`idempotent` and :class:`IdempotentMixin`.

A client sends ``Idempotency-Key: "<unique value>"`` with an unsafe request; the first
request with that key claims it through :func:`~django_onceonly.locks.check_lock`, runs
the view and stores its response; a retry with the same key gets that response back with
``Idempotent-Replayed: true`` instead of running the view again. This follows the IETF
``Idempotency-Key`` HTTP header draft:

- missing key: 400 (unless ``required=False``: the view then runs unprotected);
  malformed key: 400;
- the same key while the first request runs: 409 with ``Retry-After``;
- the same key with another method, path (query string included) or body: 422;
- responses of 500 and above, and exceptions raised by the view, are not stored: the
  claim is released so that a retry runs the view;
- the claim is taken after DRF's authentication, permission and throttling checks (the
  decorated handler only runs once they pass), so a rejected request claims nothing.

Keys are scoped per authenticated user (``idempotency-key:user:<pk>``); anonymous users
share the scope ``idempotency-key:anonymous``. Errors are ``application/problem+json``
(RFC 9457). Works on plain Django views too; DRF is imported only for type checking.

The module stays whole, past the house's 400 lines: the decorator and the mixin share
one flow (:func:`begin`, :func:`finish`, :func:`abandon`), and the header parsing, the
fingerprint and the stored form of a response exist only for that flow.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.http.request import RawPostDataException
from django.http.response import HttpResponseBase
from django.template.response import SimpleTemplateResponse

from .conf import conf
from .exceptions import (
    FingerprintMismatch,
    InvalidKey,
    InvalidResult,
    LockLost,
    ResultTooLarge,
    StoreUnavailable,
)
from .keys import validate_key
from .locks import Lock, check_lock
from .rules import Status, optional_seconds, seconds

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.response import Response
    from rest_framework.views import APIView

    _MixinBase = APIView
else:
    _MixinBase = object

logger = logging.getLogger("django_onceonly")

P = ParamSpec("P")
R = TypeVar("R")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Above the 30 s a gunicorn worker may run before it is killed: a request that dies that
# way leaves a claim that a retry takes over a little later, not an hour later.
DEFAULT_LEASE = 60.0
PROBLEM_CONTENT_TYPE = "application/problem+json"
# RFC 9457 type URIs; tag URIs name a problem without promising a page to dereference.
PROBLEM_TYPE = "tag:django-onceonly,2026:idempotency-key/"
# Not replayed: framing, per-response and per-client headers that the server sets afresh.
UNSTORED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "date",
        "keep-alive",
        "server",
        "set-cookie",
        "transfer-encoding",
        "vary",
        REPLAYED_HEADER.lower(),
    }
)
STORED_FORMAT = 1

AnyRequest = Any  # an HttpRequest, or DRF's Request wrapping one


@dataclass(frozen=True)
class Options:
    """How one view applies the header (see :func:`idempotent` for each option)."""

    required: bool = True
    ttl: float | None = None
    lease: float = DEFAULT_LEASE
    methods: tuple[str, ...] = UNSAFE_METHODS
    scope: Callable[[AnyRequest], str] | None = None

    @classmethod
    def build(
        cls,
        *,
        required: bool,
        ttl: float | dt.timedelta | None,
        lease: float | dt.timedelta,
        methods: Iterable[str],
        scope: Callable[[AnyRequest], str] | None,
    ) -> Options:
        if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
            raise TypeError(f"methods must be a list of HTTP method names, not {methods!r}")
        return cls(
            required=bool(required),
            ttl=optional_seconds(ttl, "ttl"),
            lease=seconds(lease, "lease"),
            methods=tuple(m.upper() for m in methods),
            scope=scope,
        )


@dataclass
class Step:
    """The outcome of :func:`begin`: an ``answer`` to send instead of running the view,
    or the ``lock`` this request owns (``None`` too when the view runs unprotected)."""

    answer: HttpResponse | None = None
    lock: Lock | None = None


# -- the header, the scope and the fingerprint -----------------------------------------------


def parse_key(value: str) -> str:
    """The key carried by an ``Idempotency-Key`` header value, or :class:`InvalidKey`.

    An sf-string (``"abc"``, RFC 8941: printable ASCII, ``\\"`` and ``\\\\`` escapes) or,
    leniently, a bare token. The key then follows ``check_lock``'s rules (1..255
    characters, no control character) and may not hold a lone surrogate.
    """
    text = value.strip(" \t")
    if len(text) > 2 * 255 + 2:  # beyond any valid key, even fully escaped: stop early
        raise InvalidKey(f"key is {len(text)} characters long; the limit is 255")
    if text.startswith('"'):
        chars: list[str] = []
        index = 1
        while index < len(text):
            char = text[index]
            if char == "\\":
                if text[index + 1 : index + 2] not in ('"', "\\"):
                    raise InvalidKey('a quoted key may only escape " and \\')
                chars.append(text[index + 1])
                index += 2
                continue
            if char == '"':
                if index != len(text) - 1:
                    raise InvalidKey("characters follow the closing quote of the key")
                return _checked("".join(chars))
            if not " " <= char <= "~":
                raise InvalidKey(
                    f"a quoted key holds printable ASCII only, not {char!r} at index {index - 1}"
                )
            chars.append(char)
            index += 1
        raise InvalidKey("the quoted key has no closing quote")
    return _checked(text)


def _checked(key: str) -> str:
    validate_key(key)
    for index, char in enumerate(key):
        if "\ud800" <= char <= "\udfff":
            raise InvalidKey(f"key contains the lone surrogate {char!r} at index {index}")
    return key


def default_scope(request: AnyRequest) -> str:
    """``idempotency-key:user:<pk>`` for an authenticated user, else ``...:anonymous``."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return "idempotency-key:anonymous"
    pk = getattr(user, "pk", None)
    return f"idempotency-key:user:{pk if pk is not None else user}"


def _django_request(request: AnyRequest) -> HttpRequest:
    inner = getattr(request, "_request", request)
    return cast(HttpRequest, inner)


def fingerprint(request: AnyRequest) -> str:
    """sha256 of the method, the path with its query string, and a digest of the body."""
    http = _django_request(request)
    if http.method == "POST" and http.content_type == "multipart/form-data":
        # Digest the parsed form, files' contents included: Django streams uploads to
        # disk, whereas reading the raw body would refuse any upload larger than
        # DATA_UPLOAD_MAX_MEMORY_SIZE. DRF's parsers take the parsed form as it is.
        body_digest = _parsed_body_digest(http)
    else:
        try:
            body_digest = hashlib.sha256(http.body).hexdigest()
        except RawPostDataException:  # something read the stream before the view
            body_digest = _parsed_body_digest(http)
    text = f"{http.method}\n{http.get_full_path()}\n{body_digest}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _parsed_body_digest(http: HttpRequest) -> str:
    digest = hashlib.sha256()
    try:
        fields = sorted((name, http.POST.getlist(name)) for name in http.POST)
        digest.update(json.dumps(fields).encode())
        for name in sorted(http.FILES):
            for upload in http.FILES.getlist(name):
                digest.update(f"\n{name}\n{upload.name}\n{upload.size}\n".encode())
                for chunk in upload.chunks():
                    digest.update(chunk)
                upload.seek(0)
    except MultiPartParserError:
        digest.update(b"unparseable")
    return digest.hexdigest()


# -- problem responses ------------------------------------------------------------------


def problem(
    status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None
) -> HttpResponse:
    """An ``application/problem+json`` response (RFC 9457)."""
    body = {"type": PROBLEM_TYPE + slug, "title": title, "status": status, "detail": detail}
    response = HttpResponse(
        json.dumps(body, ensure_ascii=False), status=status, content_type=PROBLEM_CONTENT_TYPE
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response


# -- the flow: begin, finish, abandon ------------------------------------------------------


def begin(request: AnyRequest, options: Options) -> Step:
    """Claim the request's key, or say what to answer instead of running the view."""
    method = str(request.method or "").upper()
    if method not in options.methods:
        return Step()
    raw = _django_request(request).headers.get(HEADER)
    if raw is None:
        if not options.required:
            return Step()
        return Step(
            answer=problem(
                400,
                "missing-key",
                "Idempotency-Key header missing",
                f"{method} requests to this endpoint need an {HEADER} header, "
                'for example Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324".',
            )
        )
    try:
        key = parse_key(raw)
    except InvalidKey as exc:
        return Step(answer=problem(400, "invalid-key", "Invalid Idempotency-Key", str(exc)))
    scope = (options.scope or default_scope)(request)
    try:
        lock = check_lock(
            key,
            scope=scope,
            ttl=options.ttl,
            lease=options.lease,
            fingerprint=fingerprint(request),
        )
    except FingerprintMismatch:
        return Step(
            answer=problem(
                422,
                "key-reused",
                "Idempotency-Key reused for another request",
                "This key was first used with another method, path or body; "
                "send a new key for a new request.",
            )
        )
    except StoreUnavailable as exc:
        logger.error("django-onceonly: Idempotency-Key %r not claimed: %s", key, exc)
        return Step(
            answer=problem(
                503,
                "store-unavailable",
                "Idempotency store unavailable",
                "The request was not run: its key could not be claimed. Retry later.",
                {"Retry-After": "1"},
            )
        )
    if lock.locked:
        return Step(lock=lock)
    if lock.record_status == Status.COMPLETED and isinstance(lock.result, dict):
        return Step(answer=replay(lock.result))
    if lock.record_status == Status.IN_PROGRESS:
        # One second, not the lease's end: the first request usually ends well before its
        # lease, and a retry then gets the replay.
        return Step(
            answer=problem(
                409,
                "in-progress",
                "A request with this Idempotency-Key is being processed",
                "Retry after the time given in Retry-After to get its response.",
                {"Retry-After": "1"},
            )
        )
    return Step(
        answer=problem(
            409,
            "outcome-unknown",
            "The outcome of the request with this Idempotency-Key is unknown",
            f"The first request with this key ended {lock.record_status}; it will not run "
            "again until an operator releases the key.",
        )
    )


def _render(request: AnyRequest, response: HttpResponseBase) -> None:
    if getattr(response, "is_rendered", True):
        return
    if hasattr(response, "data") and getattr(response, "accepted_renderer", None) is None:
        # A DRF Response straight from the handler: negotiate and render it as the view
        # would, so that the stored bytes are the ones the client gets.
        context = getattr(request, "parser_context", None) or {}
        view = context.get("view")
        if view is not None:
            view.finalize_response(request, response, *context["args"], **context["kwargs"])
    cast(SimpleTemplateResponse, response).render()


def stored_response(response: HttpResponse) -> dict[str, Any]:
    """The response as :func:`check_lock` stores it: status, headers and the body."""
    content = response.content
    headers = [
        [name, value] for name, value in response.items() if name.lower() not in UNSTORED_HEADERS
    ]
    try:
        text = content.decode("utf-8")
        encoding = "utf-8" if "\x00" not in text else "base64"
    except UnicodeDecodeError:
        encoding = "base64"
    body = text if encoding == "utf-8" else base64.b64encode(content).decode("ascii")
    return {
        "format": STORED_FORMAT,
        "status": response.status_code,
        "headers": headers,
        "body": body,
        "body_encoding": encoding,
    }


def replay(stored: dict[str, Any]) -> HttpResponse:
    """The stored response again, marked ``Idempotent-Replayed: true``."""
    if stored.get("body_encoding") == "base64":
        content = base64.b64decode(stored["body"])
    else:
        content = str(stored["body"]).encode("utf-8")
    response = HttpResponse(content, status=int(stored["status"]))
    del response["Content-Type"]
    for name, value in stored["headers"]:
        response[name] = value
    response[REPLAYED_HEADER] = "true"
    return response


def finish(request: AnyRequest, lock: Lock, response: HttpResponseBase) -> None:
    """Store the view's response for the retries, or release the key if it is not kept."""
    if response.status_code >= 500:
        abandon(lock)
        return
    if response.streaming:
        logger.warning(
            "django-onceonly: a streaming response for Idempotency-Key %r is not stored; "
            "the key is released",
            lock.key,
        )
        abandon(lock)
        return
    _render(request, response)
    http_response = cast(HttpResponse, response)
    limit = conf.ONCEONLY_MAX_RESULT_BYTES
    try:
        if len(http_response.content) > limit:  # its stored form is larger still
            raise ResultTooLarge(len(http_response.content), limit)
        lock.complete(stored_response(http_response))
    except ResultTooLarge as exc:
        logger.warning(
            "django-onceonly: the response for Idempotency-Key %r is not stored: it takes "
            "at least %d bytes, over ONCEONLY_MAX_RESULT_BYTES=%d; the key is released and "
            "a retry runs the view again",
            lock.key,
            exc.size,
            exc.limit,
        )
        abandon(lock)
    except InvalidResult as exc:
        logger.warning(
            "django-onceonly: the response for Idempotency-Key %r is not stored (%s); "
            "the key is released and a retry runs the view again",
            lock.key,
            exc,
        )
        abandon(lock)
    except (LockLost, StoreUnavailable) as exc:
        # The view ran and its response goes out; the claim ends with its lease.
        logger.warning(
            "django-onceonly: could not store the response for Idempotency-Key %r: %s",
            lock.key,
            exc,
        )


def abandon(lock: Lock) -> None:
    """Release the key so that a retry runs the view; the lease ends it if this fails."""
    try:
        lock.release()
    except (LockLost, StoreUnavailable) as exc:
        logger.warning("django-onceonly: could not release Idempotency-Key %r: %s", lock.key, exc)


# -- the decorator ------------------------------------------------------------------------


def _find_request(args: tuple[Any, ...]) -> AnyRequest:
    for arg in args[:2]:  # (request, ...) for a function view, (self, request, ...) for a method
        if isinstance(_django_request(arg), HttpRequest):
            return arg
    raise TypeError("@idempotent decorates a view: its first or second argument is the request")


@overload
def idempotent(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def idempotent(
    func: None = None,
    /,
    *,
    required: bool = True,
    ttl: float | dt.timedelta | None = None,
    lease: float | dt.timedelta = DEFAULT_LEASE,
    methods: Iterable[str] = UNSAFE_METHODS,
    scope: Callable[[AnyRequest], str] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def idempotent(
    func: Callable[P, R] | None = None,
    /,
    *,
    required: bool = True,
    ttl: float | dt.timedelta | None = None,
    lease: float | dt.timedelta = DEFAULT_LEASE,
    methods: Iterable[str] = UNSAFE_METHODS,
    scope: Callable[[AnyRequest], str] | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Honour the ``Idempotency-Key`` header on a function view or an APIView method.

    ``required``: answer 400 when the header is missing (else run the view unprotected).
    ``ttl`` (default ``ONCEONLY_TTL``): how long a stored response is replayed.
    ``lease`` (default 60 s): how long a running request's claim is trusted; a request
    that crashed leaves a claim that a retry takes over after it. Keep it above the
    longest time the view may run. ``methods`` (default POST, PUT, PATCH, DELETE): the
    methods that use the header; others run untouched. ``scope``: ``f(request) -> str``,
    the namespace of keys (default: per authenticated user, see :func:`default_scope`).

    With DRF, put it *below* ``@api_view`` (on the function it wraps), so that it runs
    after authentication, permissions and throttling.
    """
    options = Options.build(required=required, ttl=ttl, lease=lease, methods=methods, scope=scope)

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        if inspect.isclass(view) or hasattr(view, "cls") or hasattr(view, "view_class"):
            raise TypeError(
                "@idempotent goes on the view function below @api_view, or on an APIView's "
                "method; for a class-based view use IdempotentMixin"
            )
        if inspect.iscoroutinefunction(view):
            coroutine_view = cast(Callable[..., Awaitable[Any]], view)

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                request = _find_request(args)
                step = await sync_to_async(begin)(request, options)
                if step.answer is not None:
                    return step.answer
                if step.lock is None:
                    return await coroutine_view(*args, **kwargs)
                try:
                    response = await coroutine_view(*args, **kwargs)
                except BaseException:
                    await sync_to_async(abandon)(step.lock)
                    raise
                await sync_to_async(finish)(request, step.lock, response)
                return response

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            request = _find_request(args)
            step = begin(request, options)
            if step.answer is not None:
                return cast(R, step.answer)
            if step.lock is None:
                return view(*args, **kwargs)
            try:
                response = view(*args, **kwargs)
            except BaseException:
                abandon(step.lock)
                raise
            finish(request, step.lock, cast(HttpResponseBase, response))
            return response

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


# -- the mixin ----------------------------------------------------------------------------


class _Answer(Exception):
    """Raised from ``initial()`` to answer without running the handler."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


class IdempotentMixin(_MixinBase):
    """``Idempotency-Key`` for every unsafe method of an APIView or ViewSet.

    Put it first among the bases: ``class OrderViewSet(IdempotentMixin, ModelViewSet)``.
    The key is claimed in ``initial()`` after DRF's authentication, permission and
    throttling checks. Options are class attributes named like :func:`idempotent`'s:
    ``idempotency_required``, ``idempotency_ttl``, ``idempotency_lease``,
    ``idempotency_methods`` and ``idempotency_scope``.
    """

    idempotency_required: bool = True
    idempotency_ttl: float | dt.timedelta | None = None
    idempotency_lease: float | dt.timedelta = DEFAULT_LEASE
    idempotency_methods: Iterable[str] = UNSAFE_METHODS
    idempotency_scope: Callable[[AnyRequest], str] | None = None

    def idempotency_options(self) -> Options:
        # Read unbound: a plain function set on the class must not become a method.
        scope = inspect.getattr_static(self, "idempotency_scope")
        if isinstance(scope, staticmethod):
            scope = scope.__func__
        return Options.build(
            required=self.idempotency_required,
            ttl=self.idempotency_ttl,
            lease=self.idempotency_lease,
            methods=self.idempotency_methods,
            scope=scope,
        )

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self._idempotency_lock: Lock | None = None
        super().initial(request, *args, **kwargs)
        step = begin(request, self.idempotency_options())
        if step.answer is not None:
            raise _Answer(step.answer)
        self._idempotency_lock = step.lock

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _Answer):
            return cast("Response", exc.response)
        lock, self._idempotency_lock = getattr(self, "_idempotency_lock", None), None
        if lock is not None:
            abandon(lock)
        return super().handle_exception(exc)

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        lock, self._idempotency_lock = getattr(self, "_idempotency_lock", None), None
        if lock is not None:
            finish(request, lock, response)
        return response
