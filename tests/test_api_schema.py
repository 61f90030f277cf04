"""The service API's OpenAPI schema: served, valid, complete, and true of the live server.

The schema is fetched from gunicorn, validated with openapi-spec-validator and
drf-spectacular's own validator, then schemathesis generates requests from it (valid
and invalid ones) and sends them to the live endpoints: no answer may be a 5xx, and
every answer must be one the schema documents, with the documented body.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import backend_params
from tests.live_server import Live, live, live_servers  # noqa: F401

pytestmark = pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)

# Cases per operation and generation mode: 5 operations x 2 modes x this.
EXAMPLES = 30

EXPECTED_RESPONSES = {
    ("/onceonly/v1/check-lock", "post"): {"200", "400", "401", "403", "422", "503"},
    ("/onceonly/v1/complete", "post"): {"200", "400", "401", "403", "404", "409", "413", "503"},
    ("/onceonly/v1/release", "post"): {"200", "400", "401", "403", "404", "409", "503"},
    ("/onceonly/v1/fail", "post"): {"200", "400", "401", "403", "404", "409", "503"},
    ("/onceonly/v1/locks/{key}", "get"): {"200", "400", "401", "403", "404", "503"},
}


def fetch_schema(live: Live, token: str) -> dict[str, Any]:  # noqa: F811
    response = httpx.get(
        f"{live.url}/v1/schema",
        params={"format": "json"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    schema: dict[str, Any] = response.json()
    return schema


def test_schema_is_served_valid_and_describes_every_endpoint(live: Live) -> None:  # noqa: F811
    schema = fetch_schema(live, live.token()[0])
    validate(schema)  # openapi-spec-validator
    validate_schema(schema)  # drf-spectacular's validation against the OpenAPI JSON schema
    operations = {
        (path, method): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    assert set(operations) == set(EXPECTED_RESPONSES)
    for where, operation in operations.items():
        assert set(operation["responses"]) == EXPECTED_RESPONSES[where], where
        assert {"bearerAuth": []} in operation["security"]
    body = schema["components"]["schemas"]
    assert set(body["CheckLockRequest"]["properties"]) == {
        "key",
        "ttl",
        "lease",
        "fingerprint",
        "metadata",
    }
    assert set(body["CheckLockResponse"]["oneOf"][0]["$ref"].split("/")[-1:]) == {"LockedResponse"}
    assert {"ttl", "first_seen_at", "token"} <= set(body["LockedResponse"]["properties"])
    assert "token" not in body["DuplicateResponse"]["properties"]
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_schema_needs_authentication(live: Live) -> None:  # noqa: F811
    assert httpx.get(f"{live.url}/v1/schema").status_code == 401


def drive(operation: Any, mode: GenerationMode, root: str, headers: dict[str, str]) -> int:
    """Send ``EXAMPLES`` generated requests to one operation; return how many were sent."""
    checks = [not_a_server_error]
    if mode is GenerationMode.POSITIVE:
        # Valid requests must also get a documented status, content type and body.
        checks += [status_code_conformance, content_type_conformance, response_schema_conformance]
    sent = 0

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Any) -> None:
        nonlocal sent
        response = case.call(base_url=root, headers=headers)
        sent += 1
        assert response.status_code < 500, (case.body, response.text)
        case.validate_response(response, checks=checks, headers=headers)

    send()
    return sent


def test_generated_requests_never_get_a_server_error(live: Live) -> None:  # noqa: F811
    token = live.token()[0]
    schema = schemathesis.openapi.from_dict(fetch_schema(live, token))
    root = live.url.removesuffix("/onceonly")
    headers = {"Authorization": f"Bearer {token}"}
    total = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            count = drive(operation, mode, root, headers)
            print(
                f"schemathesis: {count:3d} cases  {operation.method.upper()} {operation.path} ({mode.value})"
            )
            total += count
    print(f"schemathesis: {total} cases in all, no 5xx")
    assert total > 100
