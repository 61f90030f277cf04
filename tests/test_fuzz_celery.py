"""Fuzzing ``OnceTask`` arguments with hypothesis: eager runs, on every store.

Generated arguments (any text, JSON values, values a key template cannot make a key of)
and generated return values go through a task keyed by a template and a task keyed by
the hash of its arguments. Each intent runs its body once and a second message gets the
stored result, or the call is refused with a documented error (``InvalidKey`` before
anything runs; ``InvalidResult``/``ResultTooLarge`` after the body ran, with the claim
freed); the records match. Real workers run the same code path in
``tests/test_celery_guarantees.py``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from django_onceonly import InvalidKey, InvalidResult, ResultTooLarge
from django_onceonly.celery import OnceTask
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import DatabaseStore, get_store
from tests.conftest import Backend
from tests.fuzz import (
    EXAMPLES,
    LIMIT_BYTES,
    Model,
    Tally,
    any_text,
    as_stored,
    built,
    fuzz_settings,
    json_values,
    results,
)

app = Celery("onceonly_fuzz", set_as_current=False)
app.conf.update(task_always_eager=True, task_store_eager_result=False)
runs: list[Any] = []
returns: dict[str, Any] = {}


@app.task(base=OnceTask, bind=True, shared=False, name="fuzz.templated", once_key="fz_{value}")
def templated(self: OnceTask, value: Any) -> Any:
    runs.append(value)
    return returns["result"]


@app.task(base=OnceTask, bind=True, shared=False, name="fuzz.hashed")
def hashed(self: OnceTask, value: Any, extra: Any = None) -> Any:
    runs.append(value)
    return returns["result"]


def test_once_task_takes_any_arguments_and_runs_each_intent_once(
    backend: Backend, settings: Any
) -> None:
    settings.ONCEONLY_MAX_RESULT_BYTES = LIMIT_BYTES
    model = Model(backend)
    tally = Tally(f"OnceTask fuzz on {backend.name}")

    @given(
        st.sampled_from([templated, hashed]),
        st.one_of(any_text, json_values),
        results,
    )
    @fuzz_settings()
    def run(task: Any, value: Any, result: Any) -> None:
        tally.add("examples")
        model.reset()
        runs.clear()
        returns["result"] = result = built(result)
        stored = False
        for attempt in range(2):
            try:
                # By keyword: the test workers' task_prerun receiver treats a first
                # positional str as a tag of its own (tests/celery/app.py).
                outcome = task.apply(kwargs={"value": value})
            except InvalidKey:
                tally.add("refused: InvalidKey")
                assert task is templated
                assert runs == []
                break
            if outcome.failed() and isinstance(outcome.result, InvalidKey):
                tally.add("refused: InvalidKey")
                assert task is templated
                assert runs == []
                break
            if outcome.failed():
                error = outcome.result
                assert isinstance(error, InvalidResult | ResultTooLarge), repr(error)
                tally.add(f"refused: {type(error).__name__}")
                assert len(runs) == attempt + 1  # the body ran; its claim was freed
                continue
            tally.add("ran" if attempt == 0 else "replayed")
            assert outcome.result == (result if attempt == 0 else as_stored(result))
            assert len(runs) == 1
            stored = True
        if isinstance(get_store(), DatabaseStore):
            rows = list(
                IdempotencyRecord.objects.using(backend.alias).values_list("status", "result")
            )
            assert rows == ([("completed", as_stored(result))] if stored else [])

    run()
    tally.report()
    assert tally.counts["examples"] == EXAMPLES
