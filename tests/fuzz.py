"""Hypothesis strategies and the record checker shared by ``tests/test_fuzz_*.py``.

The strategies produce what a careless or hostile caller passes: text with control
characters, lone surrogates and every plane of Unicode, values of the wrong type, JSON
that is too deep, too large or not JSON at all. Small pools of keys and scopes make
operations of one example collide, so duplicates, fingerprint mismatches and releases
are exercised as well as first claims.

:class:`Model` is the checker: it records what each operation that *succeeded* should
have left in the store, and :meth:`Model.verify` compares every record with it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from django_onceonly.keys import validate_key, validate_scope
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import DatabaseStore, get_store
from tests.conftest import Backend, delete_redis_test_keys

# Examples per test and store. CI keeps the whole fuzz suite well under a minute;
# ONCEONLY_FUZZ_EXAMPLES=500 bin/test tests/test_fuzz_core.py runs a longer campaign.
EXAMPLES = int(os.environ.get("ONCEONLY_FUZZ_EXAMPLES", "40"))


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    # No example database in the checkout (database=None) and no deadline: a claim on a
    # shared server may be slow without being wrong.
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Every code point, lone surrogates included; and the characters keys must refuse.
any_char = st.characters(exclude_categories=())
nasty_char = st.sampled_from(["\x00", "\n", "\t", "\x7f", "\x85", "\x9f", "\ud800", "\udfff"])
markup = st.sampled_from(
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "{{ 7|add:1 }}",
        "%s%d",
        "' OR 1=1 --",
    ]
)
any_text = st.one_of(
    st.text(any_char, max_size=20),
    st.text(st.one_of(any_char, nasty_char), min_size=1, max_size=8),
    markup,
    st.text(st.sampled_from("ab\u00e9\u4e2d\U0001f600"), min_size=250, max_size=260),
)
not_text = st.one_of(
    st.none(), st.integers(), st.binary(max_size=4), st.lists(st.integers(), max_size=2)
)


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` three times in four: enough valid input to reach the store and collide."""
    return st.integers(0, 3).flatmap(lambda pick: rare if pick == 3 else common)


KEY_POOL = ["k", "K", "k ", "\uff4b", "\U0001f600", "<b>k</b>"]
keys = mostly(st.sampled_from(KEY_POOL), st.one_of(st.just("x" * 255), any_text, not_text))
scopes = mostly(st.sampled_from(["", "tenant-a"]), st.one_of(any_text, not_text))
fingerprints = mostly(st.sampled_from([None, None, "", "f1", "f2"]), st.one_of(any_text, not_text))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
    ),
    max_leaves=12,
)


@dataclass(frozen=True)
class Deep:
    """JSON nested ``depth`` levels, built only when used (hypothesis cannot print it)."""

    depth: int

    def build(self) -> Any:
        value: Any = 1
        for _ in range(self.depth):
            value = {"a": value}
        return value


def built(value: Any) -> Any:
    return value.build() if isinstance(value, Deep) else value


# What can be stored plus what must be refused: not JSON (sets, bytes, NaN, objects,
# huge integers), too deep for json, too large for ONCEONLY_MAX_RESULT_BYTES.
LIMIT_BYTES = 2000
bad_values = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, {1, 2}, b"x", object(), 10**400]),
    st.integers(min_value=2**64, max_value=2**80),
    st.builds(Deep, st.sampled_from([60, 200, 5000])),
    st.text(st.sampled_from("x\u00e9"), min_size=LIMIT_BYTES - 10, max_size=LIMIT_BYTES + 10),
)
results = mostly(json_values, bad_values)
metadatas = mostly(
    st.one_of(st.none(), st.dictionaries(any_text, json_values, max_size=4)),
    st.one_of(
        st.dictionaries(st.sampled_from(["a", "b"]), bad_values, min_size=1, max_size=1),
        st.builds(Deep, st.sampled_from([60, 5000])),
        st.sampled_from([[1, 2], "ab", 5, [("a", 1)]]),
    ),
)


def is_valid(key: object, scope: object) -> bool:
    try:
        validate_key(key)
        validate_scope(scope)
    except ValueError:
        return False
    return True


def as_stored(value: Any) -> Any:
    """``value`` as it comes back from the store: through JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


@dataclass
class Expected:
    status: str
    result: Any = None
    fingerprint: str = ""


@dataclass
class Model:
    """What the operations that succeeded should have left, per ``(scope, key)``."""

    backend: Backend
    records: dict[tuple[str, str], Expected] = field(default_factory=dict)

    def reset(self) -> None:
        self.records.clear()
        if isinstance(get_store(), DatabaseStore):
            IdempotencyRecord.objects.using(self.backend.alias).all().delete()
        else:
            delete_redis_test_keys()

    def check(self, scope: str, key: str) -> None:
        expected = self.records.get((scope, key))
        record = self.backend.record(key, scope=scope)
        if expected is None:
            assert record is None, (scope, key, record)
            return
        assert record is not None, (scope, key, expected)
        assert record.status == expected.status, (scope, key, record)
        assert record.fingerprint == expected.fingerprint, (scope, key, record)
        if expected.status == "completed":
            assert record.result == expected.result, (scope, key, record.result)

    def verify(self) -> None:
        """Every expected record is there as expected, and nothing else was written."""
        for scope, key in self.records:
            self.check(scope, key)
        if isinstance(get_store(), DatabaseStore):
            stored = set(
                IdempotencyRecord.objects.using(self.backend.alias).values_list("scope", "key")
            )
            assert stored == set(self.records), stored ^ set(self.records)


@dataclass
class Tally:
    """Counts printed at the end of a fuzz test: how much really ran."""

    name: str
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def report(self) -> str:
        parts = ", ".join(f"{what} {n}" for what, n in sorted(self.counts.items()))
        line = f"{self.name}: {parts}"
        print(line)
        return line
