"""What every input from outside must be before any code acts on it.

Text holds no NUL (PostgreSQL cannot store it) and no lone surrogate (not Unicode: it cannot be
encoded, stored or answered); integers fit a signed 64-bit column; peers' times lie in a sane
range, so converting their offsets cannot overflow; JSON is strict (no ``NaN`` / ``Infinity``,
no integer literal beyond 64 bits, at most ``MAX_JSON_DEPTH`` levels). Pydantic types here are
used by the API's schemas and by the protocol's envelope, so the two cannot disagree.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from harmony.errors import BadRequest

__all__ = [
    "ADAPTER_NAME_PATTERN",
    "EARLIEST",
    "INT64_MAX",
    "JSON_INTEGER",
    "JSON_VALUE_SCHEMA",
    "LATEST",
    "MAX_JSON_DEPTH",
    "NAME_PATTERN",
    "NOT_READY_REASON_MARK",
    "NO_NUL_PATTERN",
    "AdapterName",
    "AnyChannel",
    "CallId",
    "ExternalId",
    "InboundModel",
    "JsonObject",
    "Name",
    "NotReadyReason",
    "PeerAgentId",
    "PeerTime",
    "RequestId",
    "RoutableChannel",
    "Sequence",
    "Skill",
    "Text",
    "WrapUpSeconds",
    "check_json_value",
    "check_text",
    "describe_pydantic_errors",
    "describe_validation",
    "parse_json",
    "require_utf8",
    "unknown_fields_are_json_values",
]

INT64_MAX = 2**63 - 1
MAX_JSON_DEPTH = 32
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
# Documents the NUL rule in JSON Schema; lone surrogates cannot be written in valid JSON text.
NO_NUL_PATTERN = r"^[^\x00]*$"


def check_text(value: str) -> str:
    """Refuse NUL characters and lone surrogates; return ``value`` unchanged otherwise."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (a lone surrogate is not)") from None
    return value


class _NoNulInSchema:
    """Say in the JSON Schema what ``check_text`` enforces (pydantic's own pattern check would
    answer a lone surrogate with a confusing message)."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("pattern", NO_NUL_PATTERN)
        return json_schema


Text = Annotated[str, AfterValidator(check_text), _NoNulInSchema()]
"""Any string from outside; add ``Field(max_length=...)`` where it is used."""


def _refuse_non_numbers(value: Any) -> Any:
    # JSON Schema's integer: 3 and 3.0 are, "3" and true are not (pydantic's lax mode takes both).
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


JSON_INTEGER = BeforeValidator(_refuse_non_numbers)
"""Put last in ``Annotated[int, Field(ge=..., le=...), JSON_INTEGER]``: an integer exactly as
JSON Schema means it (before the bounds, pydantic would leave them out of the JSON Schema)."""


# RFC 3339's date-time, as the schema's ``format: date-time`` means it; pydantic alone would also
# take Unix seconds, a space for the "T" and times without seconds.
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)$")


def _rfc3339_text(value: Any) -> Any:
    if not isinstance(value, str) or RFC3339.fullmatch(value) is None:
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-01-31T09:00:00Z")
    return value


def _check_peer_time(value: datetime) -> datetime:
    # The wall-clock year alone: within 2000-2099 no offset can push astimezone() out of range.
    if not EARLIEST.year <= value.year < LATEST.year:
        raise ValueError(f"must lie between {EARLIEST.year} and {LATEST.year - 1}")
    return value


class _PeerTimeInSchema:
    """Say in the JSON Schema what ``_check_peer_time`` enforces."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("pattern", r"^20[0-9]{2}-")
        return json_schema


PeerTime = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339_text),
    AfterValidator(_check_peer_time),
    _PeerTimeInSchema(),
]
"""A timestamp a peer reports: RFC 3339 with an offset, in the years 2000-2099."""


def check_json_value(value: Any, *, max_depth: int = MAX_JSON_DEPTH, text: bool = True) -> Any:
    """Refuse what strict JSON cannot carry: non-finite numbers, integers beyond 64 bits,
    nesting deeper than ``max_depth`` and, with ``text``, NUL or lone surrogates in keys or
    strings. Walks without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if text:
                check_text(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -INT64_MAX - 1 <= item <= INT64_MAX:
                raise ValueError("integers must fit in 64 bits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("numbers must be finite (no NaN or Infinity)")
            if abs(item) > INT64_MAX:
                raise ValueError("numbers must lie within ±2^63")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise ValueError(f"must not nest deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        raise ValueError("object keys must be strings")
                    if text:
                        check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        else:
            raise ValueError(f"{type(item).__name__} is not a JSON value")
    return value


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    # Its size is bounded by the body's (256 KiB).
    check_json_value(value, max_depth=MAX_JSON_DEPTH // 2)
    return value


JSON_VALUE_REF = "#/components/schemas/JsonValue"
JSON_VALUE_SCHEMA: dict[str, Any] = {
    "description": "any JSON value: no NUL in text, numbers within signed 64 bits",
    "anyOf": [
        {"type": "string", "pattern": NO_NUL_PATTERN},
        {"type": "number", "minimum": -INT64_MAX - 1, "maximum": INT64_MAX},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": JSON_VALUE_REF}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL_PATTERN},
            "additionalProperties": {"$ref": JSON_VALUE_REF},
        },
    ],
}
"""The OpenAPI component ``JsonValue`` that ``JsonObject`` refers to (api.openapi adds it)."""


def unknown_fields_are_json_values(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` for models that ignore unknown fields: say what those may hold
    (strict JSON values), unless the model forbids them."""
    schema.setdefault("additionalProperties", {"$ref": JSON_VALUE_REF})


class _JsonObjectInSchema:
    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "object",
            "description": "any JSON object, nested at most 16 levels",
            "propertyNames": {"pattern": NO_NUL_PATTERN},
            "additionalProperties": {"$ref": JSON_VALUE_REF},
        }


JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json_object), _JsonObjectInSchema()]


class _Refused(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _integer(text: str) -> int:
    # Checked before int(): Python refuses to convert literals over 4,300 digits (ValueError).
    if len(text.lstrip("-")) > 19:
        raise _Refused("an integer does not fit in 64 bits")
    number = int(text)
    if not -INT64_MAX - 1 <= number <= INT64_MAX:
        raise _Refused("an integer does not fit in 64 bits")
    return number


def _real(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Refused(f"the number {text[:20]} is out of range")
    return number


def require_utf8(body: bytes) -> str:
    """The body as text, or the 400 ``malformed_json`` the protocol promises for other bytes."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request body is not UTF-8 (byte {exc.start})", code="malformed_json"
        ) from exc


def parse_json(body: bytes) -> Any:
    """Parse a request body as strict JSON, or raise the 400 ``malformed_json`` that says why."""
    text = require_utf8(body)
    try:
        value = json.loads(text, parse_constant=_constant, parse_int=_integer, parse_float=_real)
    except _Refused as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="malformed_json") from exc
    except RecursionError as exc:
        raise BadRequest(
            f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="malformed_json"
        ) from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="malformed_json") from exc
    try:
        # Text is checked where it is used (``Text`` fields, ``JsonObject``): a field the
        # schema ignores may hold anything a string can.
        check_json_value(value, text=False)
    except ValueError as exc:
        raise BadRequest(f"request body: {exc}", code="malformed_json") from exc
    return value


def describe_validation(errors: list[Any]) -> str:
    """One line naming each refused field (at most ten), for a 422's ``detail``."""
    parts = []
    for error in errors[:10]:
        location = ".".join(str(p)[:100] for p in error.get("loc", ()) if p not in ("body",))
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else error["msg"])
    if len(errors) > 10:
        parts.append(f"and {len(errors) - 10} more")
    return "; ".join(parts) or "invalid request"


def describe_pydantic_errors(errors: list[Any], prefix: str) -> str:
    """Same wording as request validation, for bodies parsed outside FastAPI's validation."""
    return describe_validation(
        [{**e, "loc": (prefix, *e.get("loc", ()))} if prefix else e for e in errors]
    )


# --- field types shared by the operator API and the adapters' event data ------------------

ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
AdapterName = Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN)]
"""A configured CRM or ACD adapter's name: it appears in URLs and in 64-character columns."""
NAME_PATTERN = r"^[A-Za-z0-9._:@-]+$"
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)]
Skill = Annotated[Text, Field(min_length=1, max_length=100)]
ExternalId = Annotated[Text, Field(min_length=1, max_length=200)]
PeerAgentId = Annotated[Text, Field(min_length=1, max_length=200)]
RequestId = Annotated[Text, Field(min_length=1, max_length=64)]
CallId = Annotated[Text, Field(min_length=1, max_length=128)]
Sequence = Annotated[
    int, Field(ge=0, le=INT64_MAX, description="the sender's own counter"), JSON_INTEGER
]
WrapUpSeconds = Annotated[int, Field(ge=0, le=3600), JSON_INTEGER]
RoutableChannel = Literal["chat", "email"]
AnyChannel = Literal["voice", "chat", "email"]
# Marks a not-ready reason; the served document lists the configured reasons there (api.openapi).
NOT_READY_REASON_MARK = "x-harmony-not-ready-reason"
NotReadyReason = Annotated[
    Text,
    Field(
        min_length=1,
        max_length=64,
        description="one of the configured not-ready reasons (HARMONY_NOT_READY_REASONS)",
        json_schema_extra={NOT_READY_REASON_MARK: True},
    ),
]


class InboundModel(BaseModel):
    """A body from outside: unknown fields are ignored (and described as JSON values)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=unknown_fields_are_json_values)
