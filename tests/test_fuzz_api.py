"""Fuzzing the service API with hypothesis (DRF's test client, every store).

Generated bodies (keys, ttl, lease, fingerprints, metadata, results, error texts, and
fields of the wrong JSON type) go through check-lock, complete, fail and release. Every
answer is a documented one (200, 400 with field errors, 413, 422), never a 5xx: DRF's
test client re-raises an exception a view lets escape, which is what would reach a
client as a 500 with a traceback in the log. After every request the checker compares
the records with the requests that succeeded. ``tests/test_api_schema.py`` drives the
live gunicorn server from the OpenAPI schema in the same way (schemathesis, no 5xx).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from rest_framework.test import APIClient

from tests.api_fixtures import make_token
from tests.conftest import Backend
from tests.fuzz import (
    EXAMPLES,
    LIMIT_BYTES,
    Expected,
    Model,
    Tally,
    any_text,
    as_stored,
    built,
    fingerprints,
    fuzz_settings,
    is_valid,
    keys,
    metadatas,
    mostly,
    results,
)

BASE = "/onceonly/v1"
spans = mostly(
    # Long enough that no claim of an example goes stale while it runs.
    st.one_of(st.none(), st.integers(600, 3600)),
    st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=3), st.just(10**20)),
)
bodies = st.fixed_dictionaries(
    {"key": keys},
    optional={
        "ttl": spans,
        "lease": spans,
        "fingerprint": fingerprints,
        "metadata": metadatas,
        "extra": any_text,
    },
)
operations = st.lists(
    st.tuples(
        bodies, st.sampled_from(["complete", "fail", "release", "nothing"]), results, any_text
    ),
    min_size=1,
    max_size=5,
)
FIELD_ERRORS = {"key", "ttl", "lease", "fingerprint", "metadata", "token", "result", "error"}


def wire(value: Any) -> str | None:
    """``value`` as JSON text (NaN as ``NaN``), or None when JSON cannot carry it at all."""
    try:
        return json.dumps(built(value))
    except (TypeError, ValueError, RecursionError):
        return None


def post(client: APIClient, endpoint: str, raw: str) -> Any:
    # DRF's test client raises whatever a view lets escape: a 500 fails the test here.
    response = client.generic("POST", f"{BASE}/{endpoint}", raw, content_type="application/json")
    assert response.status_code < 500, response.content
    return response


def assert_field_errors(response: Any) -> None:
    errors = response.json()
    assert isinstance(errors, dict), errors
    if "detail" in errors:  # the body is not JSON at all
        assert "JSON parse error" in errors["detail"], errors
        return
    assert set(errors) <= FIELD_ERRORS, errors
    assert all(isinstance(m, str) and m for messages in errors.values() for m in messages)


def test_api_answers_any_body_with_a_documented_status_and_keeps_the_store_consistent(
    backend: Backend, settings: Any
) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = LIMIT_BYTES
    token, scope = make_token()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    model = Model(backend)
    tally = Tally(f"API fuzz on {backend.name}")

    @given(operations)
    @fuzz_settings()
    def run(ops: list[tuple[Any, ...]]) -> None:
        tally.add("examples")
        model.reset()
        for body, action, result, error in ops:
            tally.add("requests")
            raw = wire(body)
            if raw is None:
                continue
            key = body["key"]
            claimed = post(client, "check-lock", raw)
            tally.add(f"check-lock {claimed.status_code}")
            if claimed.status_code == 400:
                assert_field_errors(claimed)
            elif claimed.status_code == 422:
                stored = model.records[(scope, key)]
                assert stored.fingerprint
                assert body.get("fingerprint") not in (None, "", stored.fingerprint)
            else:
                assert claimed.status_code == 200
                answer(
                    model, tally, client, scope, key, body, claimed.json(), action, result, error
                )
            if is_valid(key, scope):
                model.check(scope, key)
        model.verify()

    run()
    tally.report()
    assert tally.counts["examples"] == EXAMPLES


def answer(
    model: Model,
    tally: Tally,
    client: APIClient,
    scope: str,
    key: str,
    body: dict[str, Any],
    reply: dict[str, Any],
    action: str,
    result: Any,
    error: str,
) -> None:
    expected = model.records.get((scope, key))
    if reply["status"] == "duplicate":
        tally.add("duplicate")
        assert expected is not None
        assert "token" not in reply
        assert reply["record_status"] == expected.status
        if expected.status == "completed":
            assert reply["result"] == expected.result
        return
    assert reply["status"] == "locked"
    assert expected is None, expected
    claimed = Expected("in_progress", fingerprint=body.get("fingerprint") or "")
    model.records[(scope, key)] = claimed
    owner = {"key": key, "token": reply["token"]}
    if action == "nothing":
        return
    if action == "complete":
        raw = wire({**owner, "result": result})
        done = post(client, "complete", raw) if raw is not None else None
        if done is not None and done.status_code == 200:
            claimed.status, claimed.result = "completed", as_stored(built(result))
        elif done is not None:
            assert done.status_code in (400, 413), done.content
            if done.status_code == 400:
                assert_field_errors(done)
            model.check(scope, key)  # refused: still in progress, still ours
            action = "release"
        else:
            action = "release"
    if action == "fail":
        failed = post(client, "fail", json.dumps({**owner, "error": error}))
        if failed.status_code == 200:
            claimed.status = "failed"
        else:
            assert failed.status_code == 400, failed.content
            assert_field_errors(failed)
            action = "release"
    if action == "release":
        assert post(client, "release", json.dumps(owner)).status_code == 200
        del model.records[(scope, key)]
    tally.add(f"then {action}")
