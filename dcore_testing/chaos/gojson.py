"""Go ``encoding/json`` behaviour, just enough for the Toxiproxy API.

Clients (and our tests) compare error bodies with the real server, so decoding
mimics Go: only the first JSON value of a body is read, unknown keys are ignored,
keys match struct fields case-insensitively, ``null`` leaves a field unchanged,
and a wrong type yields ``json: cannot unmarshal <kind> into Go struct field
<Struct>.<field> of type <type>``. Encoding is compact with Go's HTML escaping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

GoType = Literal["string", "bool", "int", "int64", "float32"]

_INT_BOUNDS = {"int": 2**63, "int64": 2**63}
_FLOAT32_MAX = 3.4028234663852886e38


class GoJSONError(ValueError):
    """A decode failure, with the message Go's decoder would give."""


class _Number(float):
    """A float that remembers its literal, for Go's ``number 1.5`` messages."""

    literal: str

    def __new__(cls, literal: str) -> _Number:
        obj = super().__new__(cls, literal)
        obj.literal = literal
        return obj


def _reject_constant(name: str) -> Any:
    raise GoJSONError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(parse_float=_Number, parse_constant=_reject_constant)

_SYNTAX_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": (
        "looking for beginning of object key string"
    ),
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
}


def decode_first_value(body: bytes) -> Any:
    """Decode the first JSON value of ``body`` the way ``json.Decoder.Decode`` does."""
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise GoJSONError("EOF")
    try:
        value, _end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            raise GoJSONError("unexpected EOF") from None
        context = _SYNTAX_CONTEXT.get(exc.msg, "looking for beginning of value")
        raise GoJSONError(f"invalid character {text[exc.pos]!r} {context}") from None
    return value


def json_kind(value: Any) -> str:
    """Go's name for a JSON value's kind, as used in unmarshal errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _coerce(value: Any, go_type: GoType, where: str) -> Any:
    def fail(kind: str) -> GoJSONError:
        return GoJSONError(f"json: cannot unmarshal {kind} into {where} of type {go_type}")

    if go_type == "string":
        if isinstance(value, str):
            return value
        raise fail(json_kind(value))
    if go_type == "bool":
        if isinstance(value, bool):
            return value
        raise fail(json_kind(value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(json_kind(value))
    literal = value.literal if isinstance(value, _Number) else str(value)
    if go_type == "float32":
        if abs(float(value)) > _FLOAT32_MAX:
            raise fail(f"number {literal}")
        return float(value) if isinstance(value, _Number) else int(value)
    if isinstance(value, _Number) or not -_INT_BOUNDS[go_type] <= value < _INT_BOUNDS[go_type]:
        raise fail(f"number {literal}")
    return int(value)


def decode_struct(
    value: Any,
    struct: str,
    fields: Mapping[str, GoType],
    into: Mapping[str, Any],
    *,
    value_type: str | None = None,
) -> dict[str, Any]:
    """Decode ``value`` onto a copy of ``into`` as Go decodes into a struct.

    ``fields`` maps each JSON key to its Go type. Returns the updated copy;
    raises :class:`GoJSONError` (the first type error, as Go reports it).
    """
    result = dict(into)
    if value is None:
        return result
    if not isinstance(value, dict):
        type_name = value_type or struct
        raise GoJSONError(
            f"json: cannot unmarshal {json_kind(value)} into Go value of type {type_name}"
        )
    folded = {name.lower(): name for name in fields}
    first_error: GoJSONError | None = None
    for key, item in value.items():
        name = key if key in fields else folded.get(key.lower())
        if name is None or item is None:
            continue
        try:
            result[name] = _coerce(item, fields[name], f"Go struct field {struct}.{name}")
        except GoJSONError as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return result


def float32(value: float) -> float | int:
    """Round to float32 and pick the shortest decimal Go would print; ints stay ints."""
    import struct as _struct

    rounded = _struct.unpack("f", _struct.pack("f", value))[0]
    if rounded == int(rounded) and abs(rounded) < 2**53:
        return int(rounded)
    for digits in range(1, 10):
        candidate = float(f"{rounded:.{digits}g}")
        if _struct.unpack("f", _struct.pack("f", candidate))[0] == rounded:
            return candidate
    return float(rounded)


def dumps(value: Any) -> bytes:
    """Compact JSON with Go's escaping of ``<``, ``>``, ``&``, U+2028 and U+2029."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode()
