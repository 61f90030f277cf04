"""Bugs the fuzz tests (``tests/test_fuzz_*.py``) found, each pinned by a plain test."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from django_onceonly import InvalidResult, check_lock
from django_onceonly.encoding import MAX_DEPTH
from tests.api_fixtures import make_token
from tests.conftest import Backend, backend_params


def arrays(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "metadata", [[1, 2], "ab", 5, [("a", 1)]], ids=["list", "str", "int", "pairs"]
)
def test_metadata_that_is_not_a_mapping_is_a_value_error(backend: Backend, metadata: Any) -> None:
    # Before: dict(metadata) raised TypeError, or turned [("a", 1)] into {"a": 1}.
    with pytest.raises(ValueError, match=r"^metadata must be a JSON-serialisable dict or None"):
        check_lock("k", metadata=metadata)

    assert backend.record("k") is None


def test_metadata_too_deep_for_json_is_a_value_error(backend: Backend) -> None:
    # Before: json.dumps raised RecursionError out of check_lock.
    with pytest.raises(ValueError, match="metadata must be a JSON-serialisable dict"):
        check_lock("k", metadata={"a": arrays(5000)})

    assert backend.record("k") is None


def test_results_and_metadata_nest_as_deep_as_every_store_holds(backend: Backend) -> None:
    # Before: on MariaDB a result or metadata nested 32 deep failed the JSON_VALID check
    # (IntegrityError, after the work ran); now every store refuses it up front.
    lock = check_lock("k", metadata={"a": arrays(MAX_DEPTH - 1)})
    with pytest.raises(InvalidResult, match=f"deeper than {MAX_DEPTH} levels"):
        lock.complete(arrays(MAX_DEPTH + 1))
    lock.complete(arrays(MAX_DEPTH))

    again = check_lock("k")
    assert again.result == arrays(MAX_DEPTH)
    with pytest.raises(ValueError, match=f"metadata cannot be stored: it nests .* {MAX_DEPTH}"):
        check_lock("other", metadata={"a": arrays(MAX_DEPTH)})
    assert backend.record("other") is None


@pytest.mark.parametrize("backend", backend_params("sqlite", "mariadb"), indirect=True)
def test_api_refuses_json_deeper_than_every_store_holds_as_a_field_error(
    backend: Backend,
) -> None:
    # Before: the API allowed 64 levels, and 32 to 64 were a 500 on MariaDB.
    http = APIClient()
    http.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token()[0]}")
    deep = {"key": "k", "metadata": {"a": arrays(MAX_DEPTH)}}

    response = http.post("/onceonly/v1/check-lock", deep, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["metadata"]
    locked = http.post("/onceonly/v1/check-lock", {"key": "k"}, format="json").json()
    body = {"key": "k", "token": locked["token"], "result": arrays(MAX_DEPTH + 1)}
    response = http.post("/onceonly/v1/complete", body, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["result"]
    body["result"] = arrays(MAX_DEPTH)
    assert http.post("/onceonly/v1/complete", body, format="json").status_code == 200
