"""The service API in-process (DRF's test client): every endpoint, status code and rule.

Each test that takes ``backend`` runs on every store (SQLite, PostgreSQL, MariaDB,
Redis). The same API over a real server process is in ``tests/test_api_live.py``.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from django_onceonly.api.openapi import spectacular_installed
from django_onceonly.stores import duplicates
from tests.api_fixtures import make_token
from tests.conftest import Backend, backend_params
from tests.test_bad_input import database_down

BASE = "/onceonly/v1"


class Client:
    """One API caller: an ``APIClient`` with its Bearer token."""

    def __init__(self, token: str, scope: str) -> None:
        self.scope = scope
        self.http = APIClient()
        self.http.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    def post(self, endpoint: str, body: Any) -> Any:
        return self.http.post(f"{BASE}/{endpoint}", body, format="json")

    def get(self, key: str) -> Any:
        return self.http.get(f"{BASE}/locks/{key}")

    def locked(self, key: str, **options: Any) -> dict[str, Any]:
        response = self.post("check-lock", {"key": key, **options})
        assert response.status_code == 200, response.content
        body: dict[str, Any] = response.json()
        assert body["status"] == "locked", body
        return body


@pytest.fixture
def alice() -> Client:
    return Client(*make_token("alice"))


@pytest.fixture
def bob() -> Client:
    return Client(*make_token("bob"))


def when(text: str) -> dt.datetime:
    """An ISO 8601 time of a response, as an aware datetime."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert value.tzinfo is not None
    return value


# -- check-lock -------------------------------------------------------------------------


def test_first_check_lock_is_locked_with_a_token_and_its_times(
    backend: Backend, alice: Client
) -> None:
    before = timezone.now()
    body = alice.locked("welcome_email_1", ttl=3600, lease=60)
    assert set(body) == {
        "status",
        "key",
        "token",
        "lease_expires_at",
        "expires_at",
        "ttl",
        "first_seen_at",
    }
    assert body["key"] == "welcome_email_1"
    assert body["token"]
    assert body["expires_at"] is None  # a running claim has no expiry yet
    assert body["ttl"] == 60
    lease_end = when(body["lease_expires_at"])
    assert before + dt.timedelta(seconds=59) < lease_end < timezone.now() + dt.timedelta(seconds=61)
    assert before - dt.timedelta(seconds=1) < when(body["first_seen_at"]) <= timezone.now()
    record = backend.record("welcome_email_1", scope=alice.scope)
    assert record is not None
    assert record.status == "in_progress"


def test_second_check_lock_is_a_duplicate_without_the_owner_token(
    backend: Backend, alice: Client
) -> None:
    first = alice.locked("welcome_email_1", lease=60)
    response = alice.post("check-lock", {"key": "welcome_email_1"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "duplicate"
    assert "token" not in body
    assert first["token"] not in response.content.decode()
    assert body["record_status"] == "in_progress"
    assert body["result"] is None
    assert 0 < body["retry_after"] <= 60
    assert 0 < body["ttl"] <= 60
    assert body["first_seen_at"] == first["first_seen_at"] == body["created_at"]


def test_ttl_without_a_lease_is_also_the_lease_as_the_hosted_service_does(
    backend: Backend, alice: Client
) -> None:
    body = alice.locked("stripe:evt_1", ttl=7200)
    assert body["ttl"] == 7200
    assert when(body["lease_expires_at"]) > timezone.now() + dt.timedelta(seconds=7190)


def test_metadata_is_kept_with_the_record(backend: Backend, alice: Client) -> None:
    alice.locked("order:12345", metadata={"user_id": 42, "tags": ["a", "é"]})
    record = backend.record("order:12345", scope=alice.scope)
    assert record is not None
    assert record.metadata == {"user_id": 42, "tags": ["a", "é"]}


def test_other_fingerprint_is_422_and_claims_nothing(backend: Backend, alice: Client) -> None:
    alice.locked("charge-7", fingerprint="sha256:aaa")
    response = alice.post("check-lock", {"key": "charge-7", "fingerprint": "sha256:bbb"})
    assert response.status_code == 422
    assert response.json()["code"] == "fingerprint_mismatch"
    same = alice.post("check-lock", {"key": "charge-7", "fingerprint": "sha256:aaa"})
    assert same.json()["status"] == "duplicate"


# -- complete, release, fail ------------------------------------------------------------


def test_complete_stores_the_result_and_duplicates_carry_it(
    backend: Backend, alice: Client
) -> None:
    lock = alice.locked("welcome_email_1", ttl=120, lease=30)
    response = alice.post(
        "complete", {"key": "welcome_email_1", "token": lock["token"], "result": {"id": "m-1"}}
    )
    assert response.status_code == 200, response.content
    done = response.json()
    assert done["status"] == "completed"
    completed_at = when(done["completed_at"])
    # The ttl asked at check-lock time (120 s, not the 30 s lease) runs from completion.
    assert when(done["expires_at"]) - completed_at == dt.timedelta(seconds=120)

    duplicate = alice.post("check-lock", {"key": "welcome_email_1"}).json()
    assert duplicate["status"] == "duplicate"
    assert duplicate["record_status"] == "completed"
    assert duplicate["result"] == {"id": "m-1"}
    assert when(duplicate["completed_at"]) == completed_at
    assert duplicate["retry_after"] is None
    assert 110 < duplicate["ttl"] <= 120


def test_complete_without_a_ttl_uses_onceonly_ttl(
    backend: Backend, alice: Client, settings: Any
) -> None:
    settings.ONCEONLY_TTL = 600
    lock = alice.locked("welcome_email_1")
    done = alice.post("complete", {"key": "welcome_email_1", "token": lock["token"]}).json()
    assert when(done["expires_at"]) - when(done["completed_at"]) == dt.timedelta(seconds=600)


def test_none_is_a_result(backend: Backend, alice: Client) -> None:
    lock = alice.locked("k")
    assert (
        alice.post("complete", {"key": "k", "token": lock["token"], "result": None}).status_code
        == 200
    )
    duplicate = alice.post("check-lock", {"key": "k"}).json()
    assert duplicate["record_status"] == "completed"
    assert duplicate["result"] is None


def test_release_lets_the_next_check_lock_claim_the_key(backend: Backend, alice: Client) -> None:
    lock = alice.locked("sms-1")
    response = alice.post("release", {"key": "sms-1", "token": lock["token"]})
    assert response.status_code == 200
    assert response.json() == {"key": "sms-1", "status": "released"}
    assert backend.record("sms-1", scope=alice.scope) is None
    again = alice.locked("sms-1")
    assert again["token"] != lock["token"]


@pytest.mark.parametrize(("outcome_unknown", "status"), [(False, "failed"), (True, "unknown")])
def test_fail_stores_the_error_and_blocks(
    backend: Backend, alice: Client, outcome_unknown: bool, status: str
) -> None:
    lock = alice.locked("charge-7")
    response = alice.post(
        "fail",
        {
            "key": "charge-7",
            "token": lock["token"],
            "error": "card declined",
            "outcome_unknown": outcome_unknown,
        },
    )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == status
    duplicate = alice.post("check-lock", {"key": "charge-7"}).json()
    assert duplicate["status"] == "duplicate"
    assert duplicate["record_status"] == status
    assert duplicate["error"] == "card declined"


def test_stale_token_gets_409_and_writes_nothing(backend: Backend, alice: Client) -> None:
    old = alice.locked("welcome_email_1")
    alice.post("release", {"key": "welcome_email_1", "token": old["token"]})
    new = alice.locked("welcome_email_1")
    for endpoint, extra in [
        ("complete", {"result": "stale"}),
        ("fail", {"error": "stale"}),
        ("release", {}),
    ]:
        response = alice.post(endpoint, {"key": "welcome_email_1", "token": old["token"], **extra})
        assert response.status_code == 409, (endpoint, response.content)
        assert response.json()["code"] == "lock_lost"
    record = backend.record("welcome_email_1", scope=alice.scope)
    assert record is not None
    assert record.status == "in_progress"
    # The new owner is untouched and finishes normally.
    assert (
        alice.post("complete", {"key": "welcome_email_1", "token": new["token"]}).status_code == 200
    )


def test_finishing_twice_gets_409(backend: Backend, alice: Client) -> None:
    lock = alice.locked("k")
    assert (
        alice.post("complete", {"key": "k", "token": lock["token"], "result": 1}).status_code == 200
    )
    again = alice.post("complete", {"key": "k", "token": lock["token"], "result": 2})
    assert again.status_code == 409
    assert alice.post("check-lock", {"key": "k"}).json()["result"] == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "token",
    ["0" * 32, "not-a-token", "{store}.1e99", "{store}.x", "{store}.0", "{store}.-5"],
)
def test_wrong_or_tampered_token_gets_409(alice: Client, token: str) -> None:
    lock = alice.locked("k", ttl=60)
    # The token is "<store token>.<ttl>"; its ttl part is validated like any ttl.
    store, ttl = lock["token"].split(".")
    assert ttl == "60"
    response = alice.post("complete", {"key": "k", "token": token.format(store=store)})
    assert response.status_code == 409, response.content
    assert alice.post("check-lock", {"key": "k"}).json()["record_status"] == "in_progress"


def test_oversize_result_is_413_and_the_claim_stays_the_owners(
    backend: Backend, alice: Client, settings: Any
) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = 100
    lock = alice.locked("report-1")
    response = alice.post(
        "complete", {"key": "report-1", "token": lock["token"], "result": "x" * 200}
    )
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "result_too_large"
    assert body["size"] == 202
    assert body["limit"] == 100
    record = backend.record("report-1", scope=alice.scope)
    assert record is not None
    assert record.status == "in_progress"
    assert alice.post("check-lock", {"key": "report-1"}).json()["record_status"] == "in_progress"
    ok = alice.post("complete", {"key": "report-1", "token": lock["token"], "result": "small"})
    assert ok.status_code == 200
    assert alice.post("check-lock", {"key": "report-1"}).json()["result"] == "small"


# -- reading a record -------------------------------------------------------------------


def test_get_lock_returns_the_record_without_the_owner_token(
    backend: Backend, alice: Client
) -> None:
    lock = alice.locked("order/12345 é", metadata={"a": 1}, lease=60)
    alice.post("check-lock", {"key": "order/12345 é"})
    duplicates.flush()  # the count of that duplicate, buffered by this process
    response = alice.get("order/12345%20%C3%A9")
    assert response.status_code == 200, response.content
    body = response.json()
    assert lock["token"] not in response.content.decode()
    assert "owner_token" not in body
    assert body["key"] == "order/12345 é"
    assert body["status"] == "in_progress"
    assert body["metadata"] == {"a": 1}
    assert body["duplicates_blocked"] == 1
    assert 0 < body["retry_after"] <= 60
    assert when(body["created_at"]) == when(lock["first_seen_at"])


@pytest.mark.django_db
def test_expired_record_is_absent(alice: Client) -> None:
    lock = alice.locked("k", ttl=0.001, lease=30)
    assert alice.post("complete", {"key": "k", "token": lock["token"]}).status_code == 200
    time.sleep(0.01)  # past the 1 ms ttl, however fast the next request comes
    assert alice.get("k").status_code == 404
    assert alice.post("check-lock", {"key": "k"}).json()["status"] == "locked"


# -- tenants ----------------------------------------------------------------------------


def test_another_clients_key_looks_exactly_like_an_absent_key(
    backend: Backend, alice: Client, bob: Client
) -> None:
    lock = alice.locked("charge-7", lease=60)
    token = lock["token"]
    requests = [
        ("get", None),
        ("complete", {"key": "charge-7", "token": token, "result": "stolen"}),
        ("release", {"key": "charge-7", "token": token}),
        ("fail", {"key": "charge-7", "token": token, "error": "x"}),
    ]
    for endpoint, body in requests:
        if body is None:
            theirs, absent = bob.get("charge-7"), bob.get("no-such-key")
        else:
            theirs = bob.post(endpoint, body)
            absent = bob.post(endpoint, {**body, "key": "no-such-key"})
        assert theirs.status_code == absent.status_code == 404, endpoint
        assert theirs.content == absent.content
        assert dict(theirs.headers) == dict(absent.headers)
    # Bob's own check-lock of the same key is his own claim, in his own scope.
    assert bob.locked("charge-7")["token"] != token
    record = backend.record("charge-7", scope=alice.scope)
    assert record is not None
    assert record.status == "in_progress"
    assert alice.post("complete", {"key": "charge-7", "token": token}).status_code == 200


def team_scope(request: Any) -> str:
    """An ``ONCEONLY_API_SCOPE`` function: users whose name starts alike share keys."""
    return "team:" + request.user.username.split("-")[0]


def test_onceonly_api_scope_replaces_the_principal(backend: Backend, settings: Any) -> None:
    settings.ONCEONLY_API_SCOPE = "tests.test_api.team_scope"
    ops_1 = Client(*make_token("ops-1"))
    ops_2 = Client(*make_token("ops-2"))
    sales = Client(*make_token("sales-1"))
    ops_1.locked("deploy-42")
    assert ops_2.post("check-lock", {"key": "deploy-42"}).json()["status"] == "duplicate"
    assert sales.post("check-lock", {"key": "deploy-42"}).json()["status"] == "locked"
    assert backend.record("deploy-42", scope="team:ops") is not None


# -- authentication ---------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "check-lock"),
        ("post", "complete"),
        ("post", "release"),
        ("post", "fail"),
        ("get", "locks/k"),
        *([("get", "schema")] if spectacular_installed() else []),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Token wrong"])
def test_every_endpoint_needs_authentication(
    method: str, path: str, authorization: str | None
) -> None:
    client = APIClient()
    if authorization:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    response = getattr(client, method)(f"{BASE}/{path}", {"key": "k"}, format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.django_db
def test_drf_token_keyword_works_too() -> None:
    token, _ = make_token()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = client.post(f"{BASE}/check-lock", {"key": "k"}, format="json")
    assert response.json()["status"] == "locked"


# -- the store down ---------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["raise", "run"])
@pytest.mark.parametrize("backend", backend_params("postgres"), indirect=True)
def test_store_down_is_503_whatever_the_store_error_policy(
    backend: Backend, alice: Client, settings: Any, policy: str
) -> None:
    settings.ONCEONLY_ON_STORE_ERROR = policy
    lock = alice.locked("k")
    with database_down("postgres"):
        for endpoint, body in [
            ("check-lock", {"key": "k2"}),
            ("complete", {"key": "k", "token": lock["token"]}),
        ]:
            response = alice.post(endpoint, body)
            assert response.status_code == 503, response.content
            assert response.json()["code"] == "store_unavailable"
            assert response["Retry-After"] == "1"
        assert alice.get("k").status_code == 503
    assert backend.record("k2", scope=alice.scope) is None
    assert alice.post("complete", {"key": "k", "token": lock["token"]}).status_code == 200
