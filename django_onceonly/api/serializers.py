"""Request and response bodies of the service API.

Request fields are strict: a key must be a JSON string (never a number turned into
one), a ttl a JSON number (never ``true``, never a string), and nothing reaches the
store that it could not hold (NUL, lone surrogates, nesting deeper than
:data:`MAX_DEPTH`). Every refusal is a field error (HTTP 400) and nothing is written.
Response serializers exist to describe the answers in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from .. import encoding
from ..exceptions import InvalidKey
from ..keys import MAX_FINGERPRINT_LENGTH, validate_fingerprint, validate_key
from ..rules import Status, seconds

# How deep metadata and results may nest: the rule every store can hold (MariaDB's
# JSON check stops at 31 levels); deeper JSON is a field error, never a database error.
MAX_DEPTH = encoding.MAX_DEPTH
MAX_TOKEN_LENGTH = 128
MAX_ERROR_LENGTH = 10_000


def json_problem(value: Any) -> str | None:
    """Why ``value`` (parsed JSON) cannot be stored, or ``None`` if it can."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH and isinstance(item, dict | list):
            return f"nests deeper than {MAX_DEPTH} levels"
        if isinstance(item, dict):
            for name, child in item.items():
                problem = _text_problem(name)
                if problem:
                    return problem
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return problem
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


class StrictCharField(serializers.CharField):
    """A string that must arrive as a JSON string, kept exactly (no trimming).

    DRF's ``CharField`` already refuses NUL and lone surrogates.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class KeyField(StrictCharField):
    """A key as ``check_lock`` takes it: 1..255 characters, no control character."""

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        try:
            return validate_key(value)
        except InvalidKey as exc:
            raise serializers.ValidationError(str(exc)) from exc


class FingerprintField(StrictCharField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", MAX_FINGERPRINT_LENGTH)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        try:
            return validate_fingerprint(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc


class SecondsField(serializers.FloatField):
    """A span in seconds: a JSON number from a microsecond to 100 years (``rules.seconds``)."""

    default_error_messages = {"invalid": "A number of seconds is required."}

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        try:
            return seconds(data, self.field_name or "seconds")
        except (ValueError, OverflowError) as exc:
            raise serializers.ValidationError(str(exc)) from exc


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StorableJSONField(serializers.JSONField):
    """Any JSON value the stores can hold."""

    def to_internal_value(self, data: Any) -> Any:
        problem = json_problem(data)
        if problem:
            raise serializers.ValidationError(f"{self.field_name} {problem}")
        return data


class StorableObjectField(StorableJSONField):
    """A JSON object the stores can hold (``metadata``)."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                f"{self.field_name} must be a JSON object, not {type(data).__name__}"
            )
        return super().to_internal_value(data)


# -- requests ---------------------------------------------------------------------------


class CheckLockRequest(serializers.Serializer[Any]):
    key = KeyField(help_text="1..255 characters, no control character.")
    ttl = SecondsField(
        required=False,
        allow_null=True,
        help_text="Seconds a finished record keeps blocking duplicates "
        "(default ONCEONLY_TTL). Without `lease`, also the lease.",
    )
    lease = SecondsField(
        required=False,
        allow_null=True,
        help_text="Seconds the claim is trusted while it runs "
        "(default: `ttl` when given, else ONCEONLY_LEASE).",
    )
    fingerprint = FingerprintField(
        required=False, allow_null=True, help_text="A digest of the payload."
    )
    metadata = StorableObjectField(
        required=False, allow_null=True, help_text="A JSON object kept with the record."
    )


class OwnerRequest(serializers.Serializer[Any]):
    key = KeyField()
    token = StrictCharField(max_length=MAX_TOKEN_LENGTH, help_text="The token check-lock gave.")


class CompleteRequest(OwnerRequest):
    result = StorableJSONField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Any JSON value, at most ONCEONLY_MAX_RESULT_BYTES when serialised.",
    )


class ReleaseRequest(OwnerRequest):
    pass


class FailRequest(OwnerRequest):
    error = StrictCharField(max_length=MAX_ERROR_LENGTH, allow_blank=True)
    outcome_unknown = StrictBooleanField(
        required=False,
        default=False,
        help_text="True when the side effect may have happened: the record turns `unknown`.",
    )


# -- responses (described in the schema) -------------------------------------------------


class LockedResponse(serializers.Serializer[Any]):
    status = serializers.CharField(help_text="`locked`: go ahead, and keep the token.")
    key = serializers.CharField()
    token = serializers.CharField(help_text="The only capability for complete/release/fail.")
    lease_expires_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True, help_text="Null while the claim runs.")
    ttl = serializers.IntegerField(
        allow_null=True, help_text="Seconds the key stays blocked from now if nothing else happens."
    )
    first_seen_at = serializers.DateTimeField(help_text="When the record was created.")


class DuplicateResponse(serializers.Serializer[Any]):
    status = serializers.CharField(help_text="`duplicate`: skip the work.")
    key = serializers.CharField()
    record_status = serializers.ChoiceField(choices=Status.choices)
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    retry_after = serializers.IntegerField(
        allow_null=True, help_text="Seconds until a running owner's lease ends."
    )
    ttl = serializers.IntegerField(
        allow_null=True, help_text="Seconds the key stays blocked from now (null: no end)."
    )
    first_seen_at = serializers.DateTimeField()


class FinishedResponse(serializers.Serializer[Any]):
    key = serializers.CharField()
    status = serializers.CharField(help_text="`completed`, `failed` or `unknown`.")
    completed_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)


class ReleasedResponse(serializers.Serializer[Any]):
    key = serializers.CharField()
    status = serializers.CharField(help_text="`released`.")


class RecordResponse(serializers.Serializer[Any]):
    key = serializers.CharField()
    status = serializers.ChoiceField(choices=Status.choices)
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    fingerprint = serializers.CharField(allow_blank=True)
    metadata = serializers.JSONField()
    task_name = serializers.CharField(allow_blank=True)
    task_id = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    lease_expires_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    retry_after = serializers.IntegerField(allow_null=True)
    duplicates_blocked = serializers.IntegerField()
    last_duplicate_at = serializers.DateTimeField(allow_null=True)


class ErrorResponse(serializers.Serializer[Any]):
    detail = serializers.CharField()
    code = serializers.CharField()


class TooLargeResponse(ErrorResponse):
    size = serializers.IntegerField(help_text="The result's size in bytes as JSON.")
    limit = serializers.IntegerField(help_text="ONCEONLY_MAX_RESULT_BYTES.")
