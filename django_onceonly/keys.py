"""Key validation, key templates and canonical (wire-form) hashing of call arguments."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import hashlib
import inspect
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from django.utils.functional import Promise

from .exceptions import InvalidKey

MAX_KEY_LENGTH = 255
MAX_SCOPE_LENGTH = 255
MAX_FINGERPRINT_LENGTH = 255

KeySpec = str | Callable[..., str]


# Unicode category Cc (U+0000-U+001F, U+007F-U+009F) and lone surrogates (U+D800-U+DFFF),
# which no database or Redis can store as UTF-8. One regular expression, not a loop over
# unicodedata: this runs on every claim.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _forbidden_character(value: str) -> str | None:
    """Describe the first character a key, scope or fingerprint may not hold, if any."""
    found = _FORBIDDEN.search(value)
    if found is None:
        return None
    char = found.group()
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "the control character"
    return f"{kind} {char!r} at index {found.start()}"


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it is a valid key, else raise :class:`InvalidKey`.

    A key is a string of 1 to 255 characters with no control character (Unicode
    category Cc, which includes ``\\x00``-``\\x1f``, ``\\x7f`` and ``\\x85``) and no lone
    surrogate (``\\ud800``-``\\udfff``, which is not text UTF-8 can carry). It is never
    truncated or hashed: a key that does not fit is the caller's bug.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKey("key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    bad = _forbidden_character(key)
    if bad is not None:
        raise InvalidKey(f"key contains {bad}")
    return key


def validate_scope(scope: object) -> str:
    """Like :func:`validate_key`, but the empty scope ``""`` is allowed (the default)."""
    if not isinstance(scope, str):
        raise InvalidKey(f"scope must be a str, not {type(scope).__name__}")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidKey(f"scope is {len(scope)} characters long; the limit is {MAX_SCOPE_LENGTH}")
    bad = _forbidden_character(scope)
    if bad is not None:
        raise InvalidKey(f"scope contains {bad}")
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
    bad = _forbidden_character(fingerprint)
    if bad is not None:
        raise ValueError(f"fingerprint contains {bad}")
    return fingerprint


# -- arguments as a message carries them -----------------------------------------------
#
# A Celery message is JSON: kombu writes a datetime, date, time, Decimal or bytes as its
# text form in a {"__type__", "__value__"} envelope that kombu's own consumers unwrap (a
# UUID as its hex digits there), and any other producer simply writes the text (a UUID as
# its canonical "8-4-4-4-12" text); a tuple becomes a list and every object key a string. Keys are derived from that wire form, so that `.delay(order_uuid)`,
# `send_task("charge", args=[str(order_uuid)])` and a message a Node service wrote all name
# one intent with one key.


class _Unknown:
    """Marks a value with no JSON wire form (a set, a model instance, a timedelta)."""


_UNKNOWN = _Unknown()


def _wire_scalar(value: Any) -> Any:
    """The text kombu puts on the wire for a value of a type it encodes, else ``_UNKNOWN``."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if isinstance(value, Promise):  # a lazy translation string
        return str(value)
    reducer = getattr(value, "__json__", None)
    if callable(reducer):
        return wire_form(reducer())
    return _UNKNOWN


def _object_key(key: Any) -> str:
    """An object key as JSON writes it: ``1`` -> ``"1"``, ``True`` -> ``"true"``."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    scalar = _wire_scalar(key)
    if isinstance(scalar, str):
        return scalar
    raise TypeError(
        f"cannot derive a key from a dict with a key of type {type(key).__name__}; "
        "pass an explicit key template or callable"
    )


def _tagged(value: Any) -> Any:
    """Types no JSON message can carry, for ``@once`` keys: tagged so they never collide."""
    if isinstance(value, dt.timedelta):
        return {"__timedelta__": value.total_seconds()}
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted(canonical_json(item) for item in value)}
    if hasattr(value, "pk") and hasattr(value, "_meta"):
        # A model instance stands for its row: its label and primary key.
        return {"__model__": value._meta.label_lower, "pk": value.pk}
    raise TypeError(
        f"cannot derive a key from an argument of type {type(value).__name__}; "
        "pass an explicit key template or callable"
    )


def wire_form(value: Any, *, keep_unknown: bool = False) -> Any:
    """``value`` as a JSON message carries it: only str, int, float, bool, None, list, dict.

    UUID, datetime, date, time, Decimal and bytes become the text kombu writes for them,
    tuples become lists and object keys strings (``{1: "a"}`` is ``{"1": "a"}``, as on the
    wire; two keys that turn into one string raise ``TypeError``). A value with no wire
    form is returned as it is with ``keep_unknown``, else tagged (sets, model instances,
    timedeltas) or refused with ``TypeError``.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [wire_form(item, keep_unknown=keep_unknown) for item in value]
    if isinstance(value, Mapping):
        carried: dict[str, Any] = {}
        for key, item in value.items():
            name = _object_key(key)
            if name in carried:
                raise TypeError(
                    f"cannot derive a key from a dict whose keys {key!r} and {name!r} are "
                    "one key in a JSON message; pass an explicit key template or callable"
                )
            carried[name] = wire_form(item, keep_unknown=keep_unknown)
        return carried
    scalar = _wire_scalar(value)
    if scalar is not _UNKNOWN:
        return scalar
    return value if keep_unknown else _tagged(value)


def canonical_json(value: Any) -> str:
    """Serialise the wire form of ``value`` the same way every time: sorted keys, no spaces."""
    try:
        return json.dumps(
            wire_form(value),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except ValueError as exc:  # NaN or infinity: no JSON message can carry them
        raise ValueError(f"cannot derive a key from these arguments: {exc}") from exc


def bind_arguments(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Bind a call to ``func``'s signature with defaults applied.

    ``f(1, b=2)`` and ``f(a=1, b=2)`` bind to the same dictionary, so they give one key.
    ``*args`` and ``**kwargs`` parameters keep their names.
    """
    try:
        signature = _signature(func)
    except TypeError:  # an unhashable callable: nothing to cache it by
        signature = inspect.signature(func)
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


# inspect.signature() reads the function anew on each call (tens of µs), and a task
# derives its key on every message. A bound method hashes and compares by its function
# and instance, so ``task.run`` finds its entry though it is a new object each time.
_signature = functools.lru_cache(maxsize=1024)(inspect.signature)


def hash_arguments(arguments: Mapping[str, Any]) -> str:
    """A 32-hex-digit digest of the canonical serialisation of ``arguments``."""
    # surrogatepass: an argument may hold a lone surrogate; it still hashes the same way.
    text = canonical_json(dict(arguments)).encode("utf-8", "surrogatepass")
    return hashlib.sha256(text).hexdigest()[:32]


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

    - a ``str`` template is formatted with the bound arguments (defaults applied), each
      in its wire form (:func:`wire_form`): ``"welcome_email_{user_id}"``;
    - a callable is called with the call's own arguments and must return the key;
    - ``None`` gives ``name`` (default ``module.qualname``) plus a hash of the wire form
      of the arguments.

    The result is validated; a template naming an unknown argument raises
    :class:`InvalidKey`.
    """
    if callable(spec):
        return validate_key(spec(*args, **kwargs))
    arguments = bind_arguments(func, args, kwargs)
    if spec is None:
        return validate_key(f"{name or default_name(func)}:{hash_arguments(arguments)}")
    # A template sees each argument as the message carries it (a datetime as its ISO 8601
    # text, a UUID as its text); what no message can carry (a model instance) as itself.
    values = {name: wire_form(value, keep_unknown=True) for name, value in arguments.items()}
    try:
        key = spec.format(**values)
    except (KeyError, IndexError) as exc:
        raise InvalidKey(
            f"key template {spec!r} names {exc} which is not an argument of {default_name(func)}"
        ) from exc
    except ValueError as exc:  # a format spec such as {when:%Y} on the wire text
        raise InvalidKey(
            f"key template {spec!r} cannot be formatted with the arguments as a message "
            f"carries them (datetimes, UUIDs and Decimals are text there): {exc}"
        ) from exc
    return validate_key(key)
