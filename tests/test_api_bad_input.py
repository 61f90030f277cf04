"""Every malformed body gets 400 with field errors, and nothing is written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from django_onceonly.models import IdempotencyRecord
from tests.api_fixtures import make_token

BASE = "/onceonly/v1"
NESTED = {"a": 1}
for _ in range(70):
    NESTED = {"a": NESTED}

# (body as sent, the field the error names). Bodies are raw JSON text, so that values
# json.dumps would never write (lone surrogates, huge numbers) are sent as they are.
CHECK_LOCK_BODIES: list[tuple[str, str]] = [
    ("{}", "key"),
    ('{"ttl": 60}', "key"),
    ('{"key": ""}', "key"),
    (json.dumps({"key": "k" * 256}), "key"),
    ('{"key": "a\\u0000b"}', "key"),
    ('{"key": "a\\nb"}', "key"),
    ('{"key": "a\\u0085b"}', "key"),
    ('{"key": "a\\u007fb"}', "key"),
    ('{"key": "\\ud800"}', "key"),
    ('{"key": 123}', "key"),
    ('{"key": true}', "key"),
    ('{"key": null}', "key"),
    ('{"key": ["k"]}', "key"),
    ('{"key": {"k": 1}}', "key"),
    ('{"key": "k", "ttl": 1e12}', "ttl"),
    ('{"key": "k", "ttl": 1e400}', "ttl"),
    ('{"key": "k", "ttl": -1}', "ttl"),
    ('{"key": "k", "ttl": 0}', "ttl"),
    ('{"key": "k", "ttl": true}', "ttl"),
    ('{"key": "k", "ttl": "60"}', "ttl"),
    ('{"key": "k", "ttl": [60]}', "ttl"),
    ('{"key": "k", "ttl": ' + "9" * 400 + "}", "ttl"),
    ('{"key": "k", "lease": 1e12}', "lease"),
    ('{"key": "k", "lease": false}', "lease"),
    ('{"key": "k", "lease": -0.5}', "lease"),
    ('{"key": "k", "fingerprint": 5}', "fingerprint"),
    (json.dumps({"key": "k", "fingerprint": "f" * 256}), "fingerprint"),
    ('{"key": "k", "fingerprint": "a\\u0000"}', "fingerprint"),
    ('{"key": "k", "fingerprint": "a\\tb"}', "fingerprint"),
    ('{"key": "k", "metadata": [1, 2]}', "metadata"),
    ('{"key": "k", "metadata": "x"}', "metadata"),
    ('{"key": "k", "metadata": {"a": "b\\u0000"}}', "metadata"),
    ('{"key": "k", "metadata": {"a\\u0000": 1}}', "metadata"),
    ('{"key": "k", "metadata": {"a": "\\udc00"}}', "metadata"),
    (json.dumps({"key": "k", "metadata": NESTED}), "metadata"),
]
OWNER_BODIES: list[tuple[str, str, str]] = [
    ("complete", '{"token": "t"}', "key"),
    ("complete", '{"key": "k"}', "token"),
    ("complete", '{"key": "k", "token": 5}', "token"),
    ("complete", json.dumps({"key": "k", "token": "t" * 129}), "token"),
    ("complete", '{"key": "k", "token": "t", "result": "a\\u0000"}', "result"),
    ("complete", '{"key": "k", "token": "t", "result": ["\\ud800"]}', "result"),
    ("complete", json.dumps({"key": "k", "token": "t", "result": [NESTED]}), "result"),
    ("release", '{"key": "", "token": "t"}', "key"),
    ("release", '{"key": "k\\r", "token": "t"}', "key"),
    ("fail", '{"key": "k", "token": "t"}', "error"),
    ("fail", '{"key": "k", "token": "t", "error": 5}', "error"),
    ("fail", '{"key": "k", "token": "t", "error": "\\ud800"}', "error"),
    (
        "fail",
        '{"key": "k", "token": "t", "error": "x", "outcome_unknown": "yes"}',
        "outcome_unknown",
    ),
    ("fail", json.dumps({"key": "k", "token": "t", "error": "e" * 10_001}), "error"),
]


@pytest.fixture
def client(db: None) -> APIClient:
    token, _ = make_token()
    http = APIClient()
    http.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return http


def post(
    client: APIClient, endpoint: str, raw: str | bytes, content_type: str = "application/json"
) -> Any:
    return client.generic("POST", f"{BASE}/{endpoint}", raw, content_type=content_type)


@pytest.mark.parametrize(("raw", "field"), CHECK_LOCK_BODIES)
def test_bad_check_lock_body_is_a_field_error_and_writes_nothing(
    client: APIClient, raw: str, field: str
) -> None:
    response = post(client, "check-lock", raw)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert list(errors) == [field], errors
    assert all(isinstance(message, str) and message for message in errors[field])
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize(("endpoint", "raw", "field"), OWNER_BODIES)
def test_bad_owner_body_is_a_field_error_and_writes_nothing(
    client: APIClient, endpoint: str, raw: str, field: str
) -> None:
    lock = post(client, "check-lock", '{"key": "k"}').json()
    before = list(IdempotencyRecord.objects.values())
    response = post(client, endpoint, raw.replace('"t"', json.dumps(lock["token"])))
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert list(IdempotencyRecord.objects.values()) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"key": "k"',
        b"\xff\xfe",
        b'{"key": NaN}',
        b'{"key": "k", "ttl": Infinity}',
        b"[" * 100_000,
    ],
)
@pytest.mark.parametrize("endpoint", ["check-lock", "complete", "release", "fail"])
def test_body_that_is_not_json_is_400_and_writes_nothing(
    client: APIClient, endpoint: str, raw: bytes
) -> None:
    response = post(client, endpoint, raw)
    assert response.status_code == 400, response.content
    assert "JSON parse error" in response.json()["detail"]
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize("raw", ["[]", '"k"', "5", "null"])
def test_body_that_is_not_an_object_is_400(client: APIClient, raw: str) -> None:
    response = post(client, "check-lock", raw)
    assert response.status_code == 400
    assert "non_field_errors" in response.json()
    assert not IdempotencyRecord.objects.exists()


def test_form_body_is_415(client: APIClient) -> None:
    response = post(client, "check-lock", "key=k", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize("path", ["a%00b", "a%0Ab", "k" * 256])
def test_bad_key_in_the_path_is_a_field_error(client: APIClient, path: str) -> None:
    response = client.get(f"{BASE}/locks/{path}")
    assert response.status_code == 400
    assert list(response.json()) == ["key"]


def test_key_of_255_characters_is_fine(client: APIClient) -> None:
    response = post(client, "check-lock", json.dumps({"key": "k" * 255}))
    assert response.json()["status"] == "locked"
