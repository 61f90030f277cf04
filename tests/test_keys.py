"""Keys derived from arguments are computed from the arguments as a JSON message carries them.

Every producer of one intent must get one key: a caller passing a ``UUID``, a Celery
worker that decoded kombu's envelope back into a ``UUID``, and a service in another
language that wrote the UUID's text. These tests need no store: they check the key
derivation itself against kombu's own JSON encoding.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from kombu.utils import json as kombu_json

from django_onceonly.exceptions import InvalidKey
from django_onceonly.keys import hash_arguments, make_key, wire_form

ORDER = uuid.UUID("12345678-1234-5678-1234-567812345678")
AT = dt.datetime(2026, 5, 1, 9, 30, 15, 120000, tzinfo=dt.UTC)


def charge(order_id: Any, when: Any = None, amount: Any = None) -> None:
    """The function whose arguments are keyed."""


def _unwrap(o: dict[str, Any]) -> Any:
    if o.keys() != {"__type__", "__value__"}:
        return o
    if o["__type__"] == "uuid":  # kombu writes {"hex": ...}; others write the UUID's text
        return str(uuid.UUID(hex=o["__value__"]["hex"]))
    return o["__value__"]


def bare_text(value: Any) -> Any:
    """What a producer in another language writes: the text inside kombu's envelope."""
    return json.loads(kombu_json.dumps(value), object_hook=_unwrap)


def through_kombu(value: Any) -> Any:
    """What a Celery worker hands the task: kombu's JSON, decoded by kombu."""
    return kombu_json.loads(kombu_json.dumps(value))


RICH_ARGUMENTS = [
    pytest.param((ORDER,), id="uuid"),
    pytest.param((42, AT), id="aware-datetime"),
    pytest.param((42, AT.replace(tzinfo=None)), id="naive-datetime"),
    pytest.param((42, dt.date(2026, 5, 1)), id="date"),
    pytest.param((42, dt.time(9, 30)), id="time"),
    pytest.param((42, None, Decimal("19.90")), id="decimal"),
    pytest.param((42, None, b"raw"), id="bytes"),
    pytest.param(((1, ORDER),), id="tuple-of-uuid"),
    pytest.param(({"lines": [{"sku": ORDER, "price": Decimal("1.5")}]},), id="nested"),
    pytest.param(({1: "a", "b": 2},), id="mixed-dict-keys"),
]


@pytest.mark.parametrize("args", RICH_ARGUMENTS)
@pytest.mark.parametrize(
    "spec", [None, "charge_{order_id}_{when}_{amount}"], ids=["hash", "template"]
)
def test_every_producer_of_one_intent_gets_one_key(spec: str | None, args: tuple[Any, ...]) -> None:
    in_caller = make_key(spec, charge, args, {}, name="shop.charge")
    on_worker = make_key(spec, charge, through_kombu(args), {}, name="shop.charge")
    from_elsewhere = make_key(spec, charge, bare_text(args), {}, name="shop.charge")

    assert in_caller == on_worker == from_elsewhere


def test_a_template_formats_a_datetime_as_its_iso_8601_text() -> None:
    key = make_key("charge_{order_id}_{when}", charge, (42, AT), {})

    # str(AT) would give "2026-05-01 09:30:15.120000+00:00", which no message carries.
    assert key == "charge_42_2026-05-01T09:30:15.120000+00:00"


def test_a_uuid_and_its_text_are_one_key() -> None:
    assert make_key(None, charge, (ORDER,), {}) == make_key(None, charge, (str(ORDER),), {})
    assert make_key("c_{order_id}", charge, (ORDER,), {}) == f"c_{ORDER}"


def test_decimals_are_keyed_by_their_text_as_on_the_wire() -> None:
    # kombu writes str(Decimal): "19.90" and "19.9" are two texts, so two intents.
    assert make_key(None, charge, (1, None, Decimal("19.90")), {}) == make_key(
        None, charge, (1, None, "19.90"), {}
    )
    assert make_key(None, charge, (1, None, Decimal("19.90")), {}) != make_key(
        None, charge, (1, None, Decimal("19.9")), {}
    )


def test_dict_keys_of_mixed_types_hash_deterministically_as_json_object_keys() -> None:
    mixed = hash_arguments({"payload": {1: "a", "b": 2}})

    assert mixed == hash_arguments({"payload": {"b": 2, 1: "a"}})
    # As on the wire: {1: "a"} is {"1": "a"} in a JSON message.
    assert mixed == hash_arguments({"payload": {"1": "a", "b": 2}})
    assert wire_form({True: 1, None: 2, 1.5: 3}) == {"true": 1, "null": 2, "1.5": 3}


def test_dict_keys_that_are_one_key_on_the_wire_are_refused_clearly() -> None:
    with pytest.raises(TypeError, match="keys '1' and '1' are one key in a JSON message"):
        hash_arguments({"payload": {1: "a", "1": "b"}})


def test_nan_argument_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="cannot derive a key from these arguments"):
        make_key(None, charge, (float("nan"),), {})


def test_argument_no_message_can_carry_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="cannot derive a key from an argument of type object"):
        make_key(None, charge, (object(),), {})


def test_sets_and_timedeltas_still_hash_for_once_but_never_as_their_text() -> None:
    assert make_key(None, charge, ({2, 1},), {}) == make_key(None, charge, ({1, 2},), {})
    assert make_key(None, charge, ({1, 2},), {}) != make_key(None, charge, ([1, 2],), {})
    assert make_key(None, charge, (dt.timedelta(seconds=5),), {}) != make_key(
        None, charge, (5.0,), {}
    )


def test_a_lone_surrogate_argument_still_hashes_and_a_template_refuses_it() -> None:
    assert make_key(None, charge, ("a\ud800",), {}).startswith("tests.test_keys.charge:")
    with pytest.raises(InvalidKey, match="key contains a lone surrogate"):
        make_key("c_{order_id}", charge, ("a\ud800",), {})


def test_a_format_spec_on_wire_text_is_an_invalid_key_not_a_crash() -> None:
    with pytest.raises(InvalidKey, match="cannot be formatted with the arguments as a message"):
        make_key("charge_{when:%Y}", charge, (1, AT), {})


def test_plain_arguments_keep_the_keys_they_had() -> None:
    # Keys of ints, strings, lists and dicts of them are what they were before the wire
    # form: the SHA-256 of the sorted, compact JSON.
    text = json.dumps({"channel": "email", "user_id": 5}, sort_keys=True, separators=(",", ":"))

    assert (
        hash_arguments({"user_id": 5, "channel": "email"})
        == (hashlib.sha256(text.encode()).hexdigest()[:32])
    )
    assert make_key("welcome_email_{order_id}", charge, (7,), {}) == "welcome_email_7"
