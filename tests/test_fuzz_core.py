"""Fuzzing ``check_lock`` and ``@once`` with hypothesis, on every store.

Each example is a short sequence of operations on a few colliding keys, with generated
keys, scopes, fingerprints, metadata and results. Every call either succeeds or raises
a documented error (``InvalidKey``, ``ValueError``, ``InvalidResult``, ``ResultTooLarge``,
``FingerprintMismatch`` where the stored fingerprint differs); after every operation
the checker (``tests/fuzz.py``) compares the store's records with the operations that
succeeded, so a refused call that wrote something, or a success that wrote the wrong
thing, fails the test. The number of examples and operations is printed.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_onceonly import (
    FingerprintMismatch,
    InvalidKey,
    InvalidResult,
    ResultTooLarge,
    check_lock,
    once,
)
from django_onceonly.models import IdempotencyRecord
from tests.conftest import Backend, backend_params
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
    json_values,
    keys,
    metadatas,
    results,
    scopes,
)

ACTIONS = ["complete", "fail", "unknown", "release", "nothing"]
operations = st.lists(
    st.tuples(keys, scopes, fingerprints, metadatas, st.sampled_from(ACTIONS), results, any_text),
    min_size=1,
    max_size=6,
)


def test_check_lock_takes_any_input_and_keeps_the_store_consistent(
    backend: Backend, settings: Any
) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = LIMIT_BYTES
    model = Model(backend)
    tally = Tally(f"check_lock fuzz on {backend.name}")

    @given(operations)
    @fuzz_settings()
    def run(ops: list[tuple[Any, ...]]) -> None:
        tally.add("examples")
        model.reset()
        for key, scope, fingerprint, metadata, action, result, error in ops:
            tally.add("operations")
            apply(
                model, tally, key, scope, fingerprint, built(metadata), action, built(result), error
            )
            if is_valid(key, scope):
                model.check(scope, key)
        model.verify()

    run()
    tally.report()
    assert tally.counts["examples"] == EXAMPLES


def apply(
    model: Model,
    tally: Tally,
    key: Any,
    scope: Any,
    fingerprint: Any,
    metadata: Any,
    action: str,
    result: Any,
    error: str,
) -> None:
    try:
        lock = check_lock(key, scope=scope, fingerprint=fingerprint, metadata=metadata)
    except InvalidKey:
        assert not is_valid(key, scope)
        tally.add("refused: InvalidKey")
        return
    except FingerprintMismatch:
        stored = model.records[(scope, key)]
        assert stored.fingerprint
        assert fingerprint
        assert fingerprint != stored.fingerprint
        tally.add("refused: FingerprintMismatch")
        return
    except ValueError as exc:
        refused = str(exc)
        tally.add("refused: ValueError")
        assert refused.startswith(("fingerprint ", "metadata ")), refused
        return
    # A wrong type where a str is needed is refused above, never stored.
    assert isinstance(key, str)
    assert isinstance(scope, str)
    expected = model.records.get((scope, key))
    if lock.duplicate:
        tally.add("duplicate")
        assert expected is not None, (scope, key)
        assert lock.record_status == expected.status
        if expected.status == "completed":
            assert lock.result == expected.result
        return
    tally.add("locked")
    assert expected is None, (scope, key, expected)
    claimed = Expected("in_progress", fingerprint=fingerprint or "")
    model.records[(scope, key)] = claimed
    if action == "complete":
        try:
            lock.complete(result)
        except (InvalidResult, ResultTooLarge) as exc:
            tally.add(f"refused: {type(exc).__name__}")
            model.check(scope, key)  # still in progress, still ours
            lock.release()
            del model.records[(scope, key)]
            return
        model.records[(scope, key)] = Expected("completed", as_stored(result), claimed.fingerprint)
    elif action in ("fail", "unknown"):
        lock.fail(error, outcome_unknown=action == "unknown")
        claimed.status = "failed" if action == "fail" else "unknown"
    elif action == "release":
        lock.release()
        del model.records[(scope, key)]
    tally.add(f"then {action}")


@pytest.mark.parametrize("backend", backend_params("sqlite", "postgres"), indirect=True)
def test_once_runs_each_generated_intent_once_or_refuses_it(
    backend: Backend, settings: Any
) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = LIMIT_BYTES
    model = Model(backend)
    tally = Tally(f"@once fuzz on {backend.name}")
    runs: list[Any] = []
    returns: dict[str, Any] = {}

    @once(key="fz_{value}")
    def templated(value: Any) -> Any:
        runs.append(value)
        return returns["result"]

    @once(name="fz.hashed")
    def hashed(value: Any) -> Any:
        runs.append(value)
        return returns["result"]

    @given(st.sampled_from([templated, hashed]), st.one_of(any_text, json_values), results)
    @fuzz_settings()
    def run(function: Any, value: Any, result: Any) -> None:
        tally.add("examples")
        model.reset()
        runs.clear()
        returns["result"] = result = built(result)
        stored = False
        for attempt in range(2):
            try:
                answer = function(value)
            except InvalidKey:
                tally.add("refused: InvalidKey")
                assert function is templated
                assert runs == []
                break
            except (InvalidResult, ResultTooLarge) as exc:
                # The body ran; its result cannot be stored, so the claim was released
                # (on_error="release") and the next call runs the body again.
                tally.add(f"refused: {type(exc).__name__}")
                assert len(runs) == attempt + 1
                continue
            tally.add("ran" if attempt == 0 else "replayed")
            assert answer == (result if attempt == 0 else as_stored(result))
            assert len(runs) == 1
            stored = True
        rows = list(IdempotencyRecord.objects.using(backend.alias).values_list("status", "result"))
        assert rows == ([("completed", as_stored(result))] if stored else [])

    run()
    tally.report()
