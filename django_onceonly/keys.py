"""Key validation, key templates and canonical hashing of call arguments."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import inspect
import json
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .exceptions import InvalidKey

MAX_KEY_LENGTH = 255
MAX_SCOPE_LENGTH = 255
MAX_FINGERPRINT_LENGTH = 255

KeySpec = str | Callable[..., str]


def _control_character(value: str) -> str | None:
    for char in value:
        if unicodedata.category(char) == "Cc":
            return char
    return None


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it is a valid key, else raise :class:`InvalidKey`.

    A key is a string of 1 to 255 characters with no control character (Unicode
    category Cc, which includes ``\\x00``-``\\x1f``, ``\\x7f`` and ``\\x85``). It is never
    truncated or hashed: a key that does not fit is the caller's bug.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKey("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    bad = _control_character(key)
    if bad is not None:
        raise InvalidKey(f"key contains the control character {bad!r} at index {key.index(bad)}")
    return key


def validate_scope(scope: object) -> str:
    """Like :func:`validate_key`, but the empty scope ``""`` is allowed (the default)."""
    if not isinstance(scope, str):
        raise InvalidKey(f"scope must be a str, not {type(scope).__name__}")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidKey(f"scope is {len(scope)} characters long; the limit is {MAX_SCOPE_LENGTH}")
    bad = _control_character(scope)
    if bad is not None:
        raise InvalidKey(
            f"scope contains the control character {bad!r} at index {scope.index(bad)}"
        )
    return scope


def validate_fingerprint(fingerprint: object) -> str:
    """Return the fingerprint as stored: ``None`` becomes ``""`` (no fingerprint)."""
    if fingerprint is None:
        return ""
    if not isinstance(fingerprint, str):
        raise ValueError(f"fingerprint must be a str or None, not {type(fingerprint).__name__}")
    if len(fingerprint) > MAX_FINGERPRINT_LENGTH:
        raise ValueError(
            f"fingerprint is {len(fingerprint)} characters long; the limit is "
            f"{MAX_FINGERPRINT_LENGTH} (pass a digest such as sha256 hex, not the payload)"
        )
    bad = _control_character(fingerprint)
    if bad is not None:
        raise ValueError(
            f"fingerprint contains the control character {bad!r} at index {fingerprint.index(bad)}"
        )
    return fingerprint


def _canonical_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return {"__datetime__": value.isoformat()}
    if isinstance(value, dt.date):
        return {"__date__": value.isoformat()}
    if isinstance(value, dt.time):
        return {"__time__": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"__timedelta__": value.total_seconds()}
    if isinstance(value, decimal.Decimal):
        # Normalised so that Decimal("1.10") and Decimal("1.1") give one key.
        return {"__decimal__": str(value.normalize())}
    if isinstance(value, uuid.UUID):
        return {"__uuid__": str(value)}
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted(canonical_json(item) for item in value)}
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    if hasattr(value, "pk") and hasattr(value, "_meta"):
        # A model instance stands for its row: its label and primary key.
        return {"__model__": value._meta.label_lower, "pk": value.pk}
    raise TypeError(
        f"cannot derive a key from an argument of type {type(value).__name__}; "
        "pass an explicit key template or callable"
    )


def canonical_json(value: Any) -> str:
    """Serialise ``value`` the same way every time: sorted keys, no whitespace.

    UUID, Decimal, datetime, date, time, timedelta, set, bytes and model instances are
    tagged so that they never collide with plain strings that look alike.
    """
    return json.dumps(
        value,
        default=_canonical_default,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def bind_arguments(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Bind a call to ``func``'s signature with defaults applied.

    ``f(1, b=2)`` and ``f(a=1, b=2)`` bind to the same dictionary, so they give one key.
    ``*args`` and ``**kwargs`` parameters keep their names.
    """
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def hash_arguments(arguments: Mapping[str, Any]) -> str:
    """A 32-hex-digit digest of the canonical serialisation of ``arguments``."""
    return hashlib.sha256(canonical_json(dict(arguments)).encode()).hexdigest()[:32]


def default_name(func: Callable[..., Any]) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def make_key(
    spec: KeySpec | None,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    name: str | None = None,
) -> str:
    """Derive the key for one call of ``func``.

    - a ``str`` template is formatted with the bound arguments (defaults applied):
      ``"welcome_email_{user_id}"``;
    - a callable is called with the call's own arguments and must return the key;
    - ``None`` gives ``name`` (default ``module.qualname``) plus a hash of the arguments.

    The result is validated; a template naming an unknown argument raises
    :class:`InvalidKey`.
    """
    if callable(spec):
        return validate_key(spec(*args, **kwargs))
    arguments = bind_arguments(func, args, kwargs)
    if spec is None:
        return validate_key(f"{name or default_name(func)}:{hash_arguments(arguments)}")
    try:
        key = spec.format(**arguments)
    except (KeyError, IndexError) as exc:
        raise InvalidKey(
            f"key template {spec!r} names {exc} which is not an argument of {default_name(func)}"
        ) from exc
    return validate_key(key)
