"""``Idempotency-Key`` on users' own views (``django_onceonly.drf``), through the test client.

Each status code and rule of the SPEC's "Idempotency-Key on your own views", on DRF
function views, an APIView method, ViewSets with ``IdempotentMixin`` and plain Django
views. Tests that take ``backend`` run on every store (SQLite, PostgreSQL, MariaDB,
Redis). Two real concurrent requests against a live server are in ``test_drf_live.py``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.utils import timezone

from django_onceonly import check_lock
from django_onceonly.drf import (
    DEFAULT_LEASE,
    PROBLEM_CONTENT_TYPE,
    IdempotentMixin,
    Options,
    begin,
    default_scope,
    fingerprint,
    idempotent,
    parse_key,
)
from django_onceonly.exceptions import InvalidKey
from tests.conftest import Backend
from tests.drf_views import checkout, reset_runs, runs_of
from tests.redis_server import RedisServer, needs_redis_server

pytestmark = pytest.mark.urls("tests.drf_urls")

PASSWORD = "s3cret-pass"
CART = {"cart": "cart-42", "amount": "19.90"}
KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


@pytest.fixture(autouse=True)
def _fresh_runs() -> None:
    reset_runs()


@pytest.fixture
def alice(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user("bob", password=PASSWORD)


def auth(user: User | str | None, password: str = PASSWORD) -> dict[str, str]:
    if user is None:
        return {}
    name = user if isinstance(user, str) else user.username
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def send(
    path: str,
    key: str | None = KEY,
    body: Any = CART,
    *,
    user: User | str | None = None,
    method: str = "post",
    content_type: str = "application/json",
    client: Client | None = None,
    **extra: Any,
) -> Any:
    headers = dict(auth(user))
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    data = json.dumps(body) if content_type == "application/json" else body
    client = client or Client()
    return getattr(client, method)(path, data=data, content_type=content_type, **headers, **extra)


def problem(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    body: dict[str, Any] = json.loads(response.content)
    assert set(body) == {"type", "title", "status", "detail"}
    assert body["status"] == response.status_code
    assert body["type"].startswith("tag:django-onceonly,2026:idempotency-key/")
    return body


def scope_of(user: User) -> str:
    return f"idempotency-key:user:{user.pk}"


# -- the first request runs, a retry is replayed ---------------------------------------------


def test_retry_replays_status_body_content_type_and_location(backend: Backend, alice: User) -> None:
    first = send("/drf/checkout/", user=alice)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first

    retry = send("/drf/checkout/", user=alice)

    assert retry.status_code == 201
    assert retry.content == first.content
    assert retry["Content-Type"] == first["Content-Type"] == "application/json"
    assert retry["Location"] == first["Location"]
    assert retry["Idempotent-Replayed"] == "true"
    assert runs_of("checkout") == [KEY]
    record = backend.record(KEY, scope_of(alice))
    assert record is not None
    assert record.status == "completed"


def test_a_completed_key_is_replayed_until_its_ttl_then_runs_again(
    backend: Backend, alice: User, settings: Any
) -> None:
    settings.ONCEONLY_TTL = 0.2
    send("/drf/checkout/", user=alice)
    assert send("/drf/checkout/", user=alice)["Idempotent-Replayed"] == "true"
    time.sleep(0.3)
    again = send("/drf/checkout/", user=alice)
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert runs_of("checkout") == [KEY, KEY]


def test_a_quoted_key_and_the_same_bare_token_are_one_key(alice: User, db: Any) -> None:
    send("/drf/checkout/", key='"order-1"', user=alice)
    retry = send("/drf/checkout/", key="order-1", user=alice)
    assert retry["Idempotent-Replayed"] == "true"
    assert runs_of("checkout") == ['"order-1"']


def test_other_keys_run_the_view_again(alice: User, db: Any) -> None:
    orders = {
        json.loads(send("/drf/checkout/", key=f"k{n}", user=alice).content)["order"]
        for n in range(3)
    }
    assert len(orders) == 3


# -- 400: missing or malformed key -----------------------------------------------------------


def test_missing_key_is_400_problem_and_runs_nothing(alice: User, db: Any) -> None:
    response = send("/drf/checkout/", key=None, user=alice)
    assert response.status_code == 400
    assert problem(response)["title"] == "Idempotency-Key header missing"
    assert runs_of() == []


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param("", "must not be empty", id="empty"),
        pytest.param('""', "must not be empty", id="empty-quoted"),
        pytest.param("k" * 256, "256 characters long; the limit is 255", id="256-chars"),
        pytest.param('"' + "k" * 256 + '"', "256 characters long", id="256-chars-quoted"),
        pytest.param("k" * 100_000, "100000 characters long", id="100k-chars"),
        pytest.param("a\x00b", "control character '\\x00'", id="nul"),
        pytest.param("a\x7fb", "control character '\\x7f'", id="del"),
        pytest.param("a\x85b", "control character '\\x85'", id="nel"),
        pytest.param("a\tb", "control character '\\t'", id="tab-inside"),
        pytest.param("a\ud800b", "lone surrogate", id="lone-surrogate"),
        pytest.param("\udfff", "lone surrogate", id="lone-low-surrogate"),
        pytest.param('"abc', "no closing quote", id="unterminated"),
        pytest.param('"a\\nb"', "may only escape", id="bad-escape"),
        pytest.param('"abc";x=1', "follow the closing quote", id="parameters"),
        pytest.param('"abc", "def"', "follow the closing quote", id="two-keys"),
        pytest.param('"caf\u00e9"', "printable ASCII only", id="non-ascii-quoted"),
    ],
)
def test_malformed_key_is_400_problem_and_writes_nothing(
    header: str, reason: str, alice: User, backend: Backend
) -> None:
    response = send("/drf/checkout/", key=header, user=alice)
    assert response.status_code == 400
    body = problem(response)
    assert body["title"] == "Invalid Idempotency-Key"
    assert reason in body["detail"]
    assert runs_of() == []
    # No store can even be asked about a key with NUL or a lone surrogate.
    if "\x00" not in header and "lone surrogate" not in reason:
        assert backend.record(header.strip('"'), scope_of(alice)) is None


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("k" * 255, "k" * 255),
        ('"' + "k" * 255 + '"', "k" * 255),
        ('"a\\"b\\\\c"', 'a"b\\c'),
        ('  "padded"  ', "padded"),
        ("opaque:token/with=punctuation", "opaque:token/with=punctuation"),
        ('"with spaces inside"', "with spaces inside"),
        ("caf\u00c3\u00a9", "caf\u00c3\u00a9"),  # UTF-8 bytes of "café" as WSGI decodes them
    ],
)
def test_parse_key_accepts_sf_strings_and_bare_tokens(header: str, key: str) -> None:
    assert parse_key(header) == key


def test_parse_key_refuses_what_check_lock_refuses() -> None:
    with pytest.raises(InvalidKey):
        parse_key("k" * 256)


def test_a_255_character_key_is_stored_on_every_store(backend: Backend, alice: User) -> None:
    key = "k" * 255
    assert send("/drf/checkout/", key=key, user=alice).status_code == 201
    assert send("/drf/checkout/", key=key, user=alice)["Idempotent-Replayed"] == "true"
    assert runs_of("checkout") == [key]


def test_without_required_the_view_runs_unprotected_when_the_key_is_missing(
    alice: User, db: Any
) -> None:
    assert send("/drf/optional/", key=None, user=alice).status_code == 201
    assert send("/drf/optional/", key=None, user=alice).status_code == 201
    assert len(runs_of("optional_key")) == 2
    # A key given is still honoured, and a malformed one still refused.
    send("/drf/optional/", key="k1", user=alice)
    assert send("/drf/optional/", key="k1", user=alice)["Idempotent-Replayed"] == "true"
    assert send("/drf/optional/", key="", user=alice).status_code == 400
    assert len(runs_of("optional_key")) == 3


# -- 409: the same key while the first request runs -------------------------------------------


def running_claim(user: User, path: str, body: Any, key: str = KEY, **options: Any) -> Any:
    """The claim a request with this key, path and body holds while its view runs."""
    request = RequestFactory().post(path, data=json.dumps(body), content_type="application/json")
    return check_lock(key, scope=scope_of(user), fingerprint=fingerprint(request), **options)


def test_same_key_while_the_first_runs_is_409_with_retry_after(
    backend: Backend, alice: User
) -> None:
    first = running_claim(alice, "/drf/checkout/", CART, lease=60)
    assert first.locked

    response = send("/drf/checkout/", user=alice)

    assert response.status_code == 409
    assert response["Retry-After"] == "1"
    assert problem(response)["title"] == "A request with this Idempotency-Key is being processed"
    assert runs_of() == []

    first.complete({"status": 201, "headers": [["Content-Type", "text/plain"]], "body": "ok"})
    replay = send("/drf/checkout/", user=alice)
    assert (replay.status_code, replay.content, replay["Idempotent-Replayed"]) == (
        201,
        b"ok",
        "true",
    )


def test_a_crashed_requests_key_is_reclaimed_after_its_lease(backend: Backend, alice: User) -> None:
    running_claim(alice, "/drf/checkout/", CART, lease=0.2)  # its process died: never finished
    assert send("/drf/checkout/", user=alice).status_code == 409
    time.sleep(0.3)

    response = send("/drf/checkout/", user=alice)

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response
    assert runs_of("checkout") == [KEY]


def test_with_after_lease_hold_a_crashed_requests_key_is_409_until_released(
    backend: Backend, alice: User, settings: Any
) -> None:
    settings.ONCEONLY_AFTER_LEASE = "hold"
    running_claim(alice, "/drf/checkout/", CART, lease=0.1)
    time.sleep(0.2)

    response = send("/drf/checkout/", user=alice)

    assert response.status_code == 409
    assert "Retry-After" not in response
    assert problem(response)["type"].endswith("/outcome-unknown")
    assert runs_of() == []


def test_a_running_requests_claim_has_a_60_second_lease(backend: Backend, alice: User) -> None:
    request = RequestFactory().post(
        "/drf/checkout/", data=json.dumps(CART), content_type="application/json"
    )
    request.user = alice
    request.META["HTTP_IDEMPOTENCY_KEY"] = KEY
    before = timezone.now()

    step = begin(request, Options())

    assert step.lock is not None
    assert step.lock.lease_expires_at is not None
    lease = (step.lock.lease_expires_at - before).total_seconds()
    assert DEFAULT_LEASE == 60
    assert lease == pytest.approx(60, abs=1)
    step.lock.release()


# -- 422: the same key for another request ----------------------------------------------------


def test_same_key_with_another_body_is_422(backend: Backend, alice: User) -> None:
    send("/drf/checkout/", user=alice)
    response = send("/drf/checkout/", body={**CART, "amount": "99.90"}, user=alice)
    assert response.status_code == 422
    assert problem(response)["title"] == "Idempotency-Key reused for another request"
    assert runs_of("checkout") == [KEY]


def test_same_key_with_another_path_or_query_string_is_422(alice: User, db: Any) -> None:
    send("/drf/checkout/", user=alice)
    assert send("/drf/orders/", user=alice).status_code == 422
    assert send("/drf/checkout/?coupon=FREE", user=alice).status_code == 422
    assert runs_of() == [KEY]


def test_same_key_with_another_method_is_422(alice: User, db: Any) -> None:
    send("/viewset/orders/7/", method="patch", body={"note": "gift"}, user=alice)
    response = send("/viewset/orders/7/", method="put", body={"note": "gift"}, user=alice)
    assert response.status_code == 422
    assert runs_of("viewset_update") == [KEY]


def test_same_key_with_another_body_while_the_first_runs_is_422(alice: User, db: Any) -> None:
    running_claim(alice, "/drf/checkout/", CART)
    assert send("/drf/checkout/", body={"cart": "other"}, user=alice).status_code == 422


# -- what is not stored -------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_response_is_not_stored_and_a_retry_runs(
    status: int, backend: Backend, alice: User
) -> None:
    first = send(f"/drf/server-error/?status={status}", user=alice)
    assert first.status_code == status
    assert backend.record(KEY, scope_of(alice)) is None

    retry = send(f"/drf/server-error/?status={status}", user=alice)

    assert retry.status_code == status
    assert "Idempotent-Replayed" not in retry
    assert runs_of("server_error") == [KEY, KEY]


def test_a_4xx_response_the_view_returns_is_stored(alice: User, db: Any) -> None:
    send("/drf/server-error/?status=402", user=alice)
    retry = send("/drf/server-error/?status=402", user=alice)
    assert (retry.status_code, retry["Idempotent-Replayed"]) == (402, "true")
    assert runs_of("server_error") == [KEY]


def test_an_exception_is_not_stored_and_a_retry_runs(backend: Backend, alice: User) -> None:
    with pytest.raises(RuntimeError, match="timed out"):
        send("/drf/crashing/", user=alice)
    assert backend.record(KEY, scope_of(alice)) is None

    client = Client(raise_request_exception=False)
    assert send("/drf/crashing/", user=alice, client=client).status_code == 500
    assert runs_of("crashing") == [KEY, KEY]
    assert backend.record(KEY, scope_of(alice)) is None


def test_a_validation_error_is_not_stored_so_the_fixed_request_runs(alice: User, db: Any) -> None:
    refused = send("/drf/checkout/", body={"cart": "cart-42"}, user=alice)
    assert refused.status_code == 400
    assert "amount" in json.loads(refused.content)

    fixed = send("/drf/checkout/", user=alice)

    assert fixed.status_code == 201
    assert "Idempotent-Replayed" not in fixed
    assert runs_of("checkout") == [KEY]


def test_a_body_that_is_not_the_json_it_claims_is_a_400_and_not_stored(
    alice: User, db: Any
) -> None:
    broken = Client().post(
        "/drf/checkout/",
        data="{not json",
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=KEY,
        **auth(alice),
    )
    assert broken.status_code == 400  # DRF's ParseError, raised in the view
    assert "JSON parse error" in json.loads(broken.content)["detail"]
    assert send("/drf/checkout/", user=alice).status_code == 201


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("plain text, not JSON", "text/plain"),
        ("cart=cart-42&amount=19.90", "application/x-www-form-urlencoded"),
        (b"\xff\xfe\x00 raw bytes \x80", "application/octet-stream"),
    ],
)
def test_non_json_bodies_are_fingerprinted_by_their_bytes(
    body: Any, content_type: str, alice: User, db: Any
) -> None:
    first = send("/drf/echo/", body=body, content_type=content_type, user=alice)
    assert first.status_code == 201
    retry = send("/drf/echo/", body=body, content_type=content_type, user=alice)
    assert retry["Idempotent-Replayed"] == "true"
    other = body + (b"!" if isinstance(body, bytes) else "!")
    assert send("/drf/echo/", body=other, content_type=content_type, user=alice).status_code == 422
    assert runs_of("echo_body") == [KEY]


def test_multipart_uploads_are_fingerprinted_by_their_fields_and_files(
    alice: User, db: Any, settings: Any
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    # Files are streamed, not read as one body: an upload far above
    # DATA_UPLOAD_MAX_MEMORY_SIZE still works.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1000  # and larger files go to disk
    big = b"%PDF-1 " + b"x" * 50_000

    def post(content: bytes, note: str = "receipt") -> Any:
        return Client().post(
            "/drf/upload/",
            data={"note": note, "file": SimpleUploadedFile("r.pdf", content)},
            HTTP_IDEMPOTENCY_KEY=KEY,
            **auth(alice),
        )

    first = post(big)
    assert first.status_code == 201
    assert json.loads(first.content) == {"note": "receipt", "sizes": {"file": len(big)}}
    assert post(big)["Idempotent-Replayed"] == "true"
    assert post(big[:-1] + b"y").status_code == 422  # same size, another last byte
    assert post(big, note="other").status_code == 422
    assert runs_of("upload") == [KEY]


def test_a_body_above_data_upload_max_memory_size_is_a_400_and_claims_nothing(
    alice: User, backend: Backend, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big = {**CART, "cart": "c" * 2000}
    assert send("/drf/checkout/", body=big, user=alice).status_code == 400
    assert send("/viewset/orders/", body=big, user=alice).status_code == 400
    assert backend.record(KEY, scope_of(alice)) is None
    assert runs_of() == []


def test_a_template_response_is_rendered_then_stored(db: Any) -> None:
    first = send("/plain/receipt/")
    retry = send("/plain/receipt/")
    assert first.content.startswith(b"<p>Receipt ")
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert retry["Content-Type"] == "text/html; charset=utf-8"


# -- rejected before the view ran: nothing claimed ----------------------------------------------


@pytest.mark.parametrize(
    ("user", "extra", "status"),
    [
        pytest.param(None, {}, 401, id="no-credentials"),
        pytest.param("alice", {"password": "wrong"}, 401, id="bad-password"),
        pytest.param("alice", {"HTTP_X_DENY": "1"}, 403, id="permission-denied"),
        pytest.param("alice", {"HTTP_X_THROTTLE": "1"}, 429, id="throttled"),
    ],
)
@pytest.mark.parametrize("path", ["/drf/guarded/", "/viewset/orders/"])
def test_requests_rejected_before_the_view_claim_nothing(
    path: str, user: str | None, extra: dict[str, str], status: int, alice: User, backend: Backend
) -> None:
    headers = dict(extra)
    password = headers.pop("password", PASSWORD)
    response = Client().post(
        path,
        data=json.dumps(CART),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=KEY,
        **(auth(user, password) if user else {}),
        **headers,
    )
    assert response.status_code == status
    assert runs_of() == []
    for scope in (scope_of(alice), "idempotency-key:anonymous"):
        assert backend.record(KEY, scope) is None

    accepted = send(path, user=alice)

    assert accepted.status_code == 201
    assert "Idempotent-Replayed" not in accepted


# -- scopes ------------------------------------------------------------------------------


def test_one_users_key_is_not_anothers(backend: Backend, alice: User, bob: User) -> None:
    alices = send("/drf/checkout/", user=alice)
    bobs = send("/drf/checkout/", user=bob)
    assert bobs.status_code == 201
    assert "Idempotent-Replayed" not in bobs
    assert alices.content != bobs.content

    assert send("/drf/checkout/", user=alice).content == alices.content
    assert send("/drf/checkout/", user=bob).content == bobs.content
    # Bob's other body is no conflict with Alice's request.
    assert send("/drf/checkout/", key="k2", user=alice).status_code == 201
    assert send("/drf/checkout/", key="k2", body={**CART, "cart": "b"}, user=bob).status_code == 201
    assert len(runs_of("checkout")) == 4
    assert backend.record(KEY, scope_of(alice)) is not None
    assert backend.record(KEY, scope_of(bob)) is not None


def test_anonymous_users_share_a_scope_of_their_own(backend: Backend, alice: User) -> None:
    first = send("/drf/anonymous/")
    assert first.status_code == 201
    assert send("/drf/anonymous/", client=Client())["Idempotent-Replayed"] == "true"
    assert send("/drf/checkout/", user=alice)["Location"] != first["Location"]
    record = backend.record(KEY, "idempotency-key:anonymous")
    assert record is not None
    assert record.status == "completed"


def test_default_scope_names_the_user_or_anonymous(alice: User, db: Any) -> None:
    from django.contrib.auth.models import AnonymousUser

    request = RequestFactory().post("/")
    assert default_scope(request) == "idempotency-key:anonymous"
    request.user = AnonymousUser()
    assert default_scope(request) == "idempotency-key:anonymous"
    request.user = alice
    assert default_scope(request) == f"idempotency-key:user:{alice.pk}"


def test_a_scope_option_replaces_the_per_user_scope(alice: User, bob: User, db: Any) -> None:
    first = send("/viewset/optional/", user=alice)
    retry = send("/viewset/optional/", user=bob)  # same scope for everyone, by choice
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert send("/viewset/optional/", key=None, user=bob).status_code == 201


# -- an APIView method, ViewSets -----------------------------------------------------------


def test_an_apiview_method_is_idempotent_and_its_get_untouched(
    backend: Backend, alice: User
) -> None:
    first = send("/drf/orders/", user=alice)
    assert first.status_code == 201
    assert send("/drf/orders/", user=alice)["Idempotent-Replayed"] == "true"
    assert send("/drf/orders/", key=None, user=alice).status_code == 400
    listing = Client().get("/drf/orders/", **auth(alice))
    assert listing.status_code == 200
    assert json.loads(listing.content) == {"orders": 1}


def test_the_mixin_covers_every_unsafe_method_of_a_viewset(backend: Backend, alice: User) -> None:
    created = send("/viewset/orders/", user=alice)
    assert created.status_code == 201
    replayed = send("/viewset/orders/", user=alice)
    assert replayed["Idempotent-Replayed"] == "true"
    assert replayed.content == created.content
    assert send("/viewset/orders/", key=None, user=alice).status_code == 400
    assert send("/viewset/orders/3/", key=None, method="patch", user=alice).status_code == 400
    listing = Client().get("/viewset/orders/", HTTP_IDEMPOTENCY_KEY="listing", **auth(alice))
    assert listing.status_code == 200
    assert backend.record("listing", scope_of(alice)) is None  # GET claims nothing
    record = backend.record(KEY, scope_of(alice))
    assert record is not None
    assert record.expires_at is not None
    assert record.completed_at is not None
    ttl = (record.expires_at - record.completed_at).total_seconds()
    assert ttl == pytest.approx(3600, abs=1)  # idempotency_ttl


def test_the_mixin_releases_the_key_when_the_handler_raises(backend: Backend, alice: User) -> None:
    with pytest.raises(RuntimeError):
        send("/viewset/orders/5/", method="patch", body={"fail": True}, user=alice)
    assert backend.record(KEY, scope_of(alice)) is None
    with pytest.raises(RuntimeError):
        send("/viewset/orders/5/", method="patch", body={"fail": True}, user=alice)
    assert runs_of("viewset_update") == [KEY, KEY]


def test_the_mixin_does_not_store_a_405(alice: User, backend: Backend) -> None:
    response = send("/viewset/optional/", method="put", user=alice)
    assert response.status_code == 405
    assert backend.record(KEY, "shared-by-everyone") is None


# -- plain Django views --------------------------------------------------------------------


def test_a_plain_django_view_is_idempotent_per_logged_in_user(
    backend: Backend, alice: User
) -> None:
    client = Client()
    client.force_login(alice)
    first = send("/plain/checkout/", client=client)
    retry = send("/plain/checkout/", client=client)
    assert first.status_code == 201
    assert (retry.status_code, retry.content, retry["Location"]) == (
        201,
        first.content,
        first["Location"],
    )
    assert retry["Idempotent-Replayed"] == "true"
    assert backend.record(KEY, scope_of(alice)) is not None
    # Not logged in: the anonymous scope, so the view runs again.
    assert "Idempotent-Replayed" not in send("/plain/checkout/")
    assert len(runs_of("plain_checkout")) == 2


def test_an_async_plain_view_is_idempotent(backend: Backend) -> None:
    first = send("/plain/async-checkout/")
    retry = send("/plain/async-checkout/")
    assert first.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert runs_of("async_checkout") == [KEY]


def test_an_async_plain_view_is_idempotent_under_the_async_client(
    transactional_db: Any,
) -> None:
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    async def two_requests() -> tuple[Any, Any]:
        client = AsyncClient()
        first = await client.post("/plain/async-checkout/", headers={"Idempotency-Key": "a-1"})
        retry = await client.post("/plain/async-checkout/", headers={"Idempotency-Key": "a-1"})
        return first, retry

    first, retry = async_to_sync(two_requests)()

    assert first.status_code == 201
    assert retry.content == first.content
    assert retry["Idempotent-Replayed"] == "true"
    assert runs_of("async_checkout") == ["a-1"]


def test_binary_bodies_are_replayed_byte_for_byte(backend: Backend) -> None:
    first = send("/plain/binary/")
    retry = send("/plain/binary/")
    assert retry.content == first.content == b"\x00\xff\xfe binary \x80 body"
    assert retry["Content-Type"] == "application/octet-stream"
    assert retry["Idempotent-Replayed"] == "true"


def test_headers_that_matter_are_replayed_and_cookies_are_not(db: Any) -> None:
    first = send("/plain/csv/")
    retry = send("/plain/csv/")
    assert retry.content == first.content
    for header in ("Content-Type", "X-Export-Id", "Content-Disposition"):
        assert retry[header] == first[header]
    assert "last_export" in first.cookies
    assert "last_export" not in retry.cookies
    assert runs_of("csv_export") == [KEY]


def test_a_streaming_response_is_not_stored(db: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="django_onceonly"):
        first = send("/plain/streaming/")
    assert b"".join(first.streaming_content) == b"part 1,part 2"
    assert "streaming response" in caplog.text
    send("/plain/streaming/")
    assert runs_of("streaming") == [KEY, KEY]


def test_get_and_other_safe_methods_ignore_the_header(db: Any) -> None:
    response = Client().get("/plain/checkout/", HTTP_IDEMPOTENCY_KEY="\x00 not even valid")
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response


# -- size ----------------------------------------------------------------------------------


def test_an_oversize_response_is_returned_but_not_stored(
    backend: Backend, alice: User, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = 2000
    with caplog.at_level(logging.WARNING, logger="django_onceonly"):
        first = send("/drf/big/?size=5000", user=alice)
    assert first.status_code == 201
    assert len(json.loads(first.content)["blob"]) == 5000
    assert "is not stored" in caplog.text
    assert "ONCEONLY_MAX_RESULT_BYTES=2000" in caplog.text
    assert backend.record(KEY, scope_of(alice)) is None

    retry = send("/drf/big/?size=5000", user=alice)
    assert "Idempotent-Replayed" not in retry
    assert runs_of("big") == [KEY, KEY]

    # Just under the limit once stored as JSON: kept.
    send("/drf/big/?size=1500", key="small", user=alice)
    assert send("/drf/big/?size=1500", key="small", user=alice)["Idempotent-Replayed"] == "true"


# -- the store is down -----------------------------------------------------------------------


@needs_redis_server
def test_a_store_outage_is_503_and_the_view_does_not_run(
    tmp_path: Path, settings: Any, alice: User
) -> None:
    own = RedisServer(tmp_path, "aof-always").start()
    settings.CACHES = {**settings.CACHES, "own": own.cache()}
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = "own"
    try:
        send("/drf/checkout/", user=alice)
        own.stop(signal.SIGKILL)

        response = send("/drf/checkout/", key="during-outage", user=alice)

        assert response.status_code == 503
        assert problem(response)["type"].endswith("/store-unavailable")
        assert runs_of("checkout") == [KEY]
        own.start()
        assert send("/drf/checkout/", user=alice)["Idempotent-Replayed"] == "true"
    finally:
        own.stop(signal.SIGKILL)


# -- wrong use is refused up front ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"lease": 0}, ValueError),
        ({"lease": float("inf")}, ValueError),
        ({"ttl": -1}, ValueError),
        ({"ttl": dt.timedelta(days=365 * 101)}, ValueError),
        ({"methods": "POST"}, TypeError),
    ],
)
def test_bad_options_are_refused_when_decorating(options: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        idempotent(**options)


def test_idempotent_above_api_view_or_on_a_class_is_refused() -> None:
    with pytest.raises(TypeError, match="below @api_view"):
        idempotent(checkout)
    with pytest.raises(TypeError, match="IdempotentMixin"):
        idempotent(IdempotentMixin)
