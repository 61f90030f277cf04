"""What can be stored: results, metadata and error texts as the stores hold them.

Every store keeps these as UTF-8 JSON or text, and PostgreSQL refuses NUL in both. The
rules live here, once, so that a value is refused with a clear error before anything
is written, never half-way through a store's write.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .conf import conf
from .exceptions import InvalidResult, ResultTooLarge

# PostgreSQL's jsonb refuses NUL, which JSON writes as \u0000. That text is an escape only
# after an even number of backslashes; the string "C:\\u0000" (a real backslash, then
# "u0000") encodes as "C:\\\\u0000" and must still be stored.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# MariaDB's JSON check (JSON_VALID) refuses arrays and objects nested 32 deep, so a
# record must not nest deeper than 31 on any store: a value one store accepts must not
# be a database error on another (found by tests/test_fuzz_core.py).
MAX_DEPTH = 31


def too_deep(value: Any) -> bool:
    """Whether ``value`` nests lists and dicts more than :data:`MAX_DEPTH` levels."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _may_be_too_deep(encoded: str) -> bool:
    """Whether the JSON text ``encoded`` could nest deeper than :data:`MAX_DEPTH`.

    Nesting ``MAX_DEPTH + 1`` levels takes that many opening brackets, so text with fewer
    is never too deep and :func:`too_deep` need not walk it (the common case, on every
    claim and completion). Brackets inside strings only make this answer yes more often.
    """
    return encoded.count("[") + encoded.count("{") > MAX_DEPTH


def encode_result(result: Any) -> str:
    """Serialise ``result`` as stored, or raise ``InvalidResult`` / ``ResultTooLarge``."""
    try:
        encoded = json.dumps(result, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidResult(
            f"result of type {type(result).__name__} cannot be stored: it is not JSON-serialisable ({exc})"
        ) from exc
    if "\\u0000" in encoded and _ESCAPED_NUL.search(encoded):
        raise InvalidResult("result cannot be stored: it contains a NUL character (\\u0000)")
    if _may_be_too_deep(encoded) and too_deep(result):
        raise InvalidResult(
            f"result cannot be stored: it nests lists and dicts deeper than {MAX_DEPTH} levels"
        )
    try:
        size = len(encoded.encode())
    except UnicodeEncodeError as exc:
        raise InvalidResult(
            "result cannot be stored: it contains a lone surrogate "
            f"({exc.object[exc.start : exc.end]!r}), which is not valid UTF-8 text"
        ) from exc
    limit = conf.ONCEONLY_MAX_RESULT_BYTES
    if size > limit:
        raise ResultTooLarge(size, limit)
    return encoded


def encode_metadata(metadata: dict[str, Any]) -> str:
    """Serialise a record's ``metadata`` as stored, or raise ``ValueError``."""
    if not metadata:  # the common case, on every claim
        return "{}"
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"metadata must be a JSON-serialisable dict: {exc}") from exc
    if "\\u0000" in encoded and _ESCAPED_NUL.search(encoded):
        raise ValueError("metadata cannot be stored: it contains a NUL character (\\u0000)")
    if _LONE_SURROGATE.search(encoded):
        raise ValueError("metadata cannot be stored: it contains a lone surrogate (not UTF-8)")
    if _may_be_too_deep(encoded) and too_deep(metadata):
        raise ValueError(
            f"metadata cannot be stored: it nests lists and dicts deeper than {MAX_DEPTH} levels"
        )
    return encoded


def encode_error(error: object) -> str:
    """The text stored for a failure: NUL and lone surrogates escaped, never refused."""
    text = (
        str(error) if not isinstance(error, BaseException) else f"{type(error).__name__}: {error}"
    ).replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL
    if _LONE_SURROGATE.search(text):  # nor can any store hold a lone surrogate
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
