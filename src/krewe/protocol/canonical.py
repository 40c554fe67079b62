"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and digests.

Miners and the orchestrator agree on an answer when the SHA-256 digests of its canonical bytes
are equal, so everything here is exact and shared by both sides:

- `parse_strict` reads untrusted bytes and accepts only JSON that has exactly one canonical form:
  no NaN or Infinity, no duplicate object keys, no lone surrogates, no integer beyond what an
  IEEE-754 double holds exactly (±(2^53 − 1)), no nesting deeper than `MAX_DEPTH`.
- `check_nesting` is the nesting check alone, on raw bytes, for readers that decode with a faster
  parser (the client API's request bodies).
- `canonical_json` writes the RFC 8785 bytes of a value built from dict, list, tuple, str, int,
  float, bool and None, and refuses anything `parse_strict` would refuse.
- `digest` is the lowercase hex SHA-256 of those bytes.

RFC 8785 in brief: object members sorted by the UTF-16 code units of their names, no
whitespace, strings escaped as ECMAScript's JSON.stringify does (only `"`, `\\` and control
characters), numbers written as ECMAScript's Number.prototype.toString.
"""

import functools
import hashlib
import json
import math
import re
from typing import Any

import orjson

__all__ = [
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "CanonicalError",
    "canonical_json",
    "check_nesting",
    "digest",
    "parse_strict",
]

MAX_DEPTH = 64
MAX_SAFE_INTEGER = 2**53 - 1

_escape_string = json.encoder.encode_basestring


class CanonicalError(ValueError):
    """A value or document that has no canonical JSON form; the message names the problem."""


def parse_strict(data: bytes, *, max_bytes: int) -> Any:
    """Parse untrusted JSON bytes, accepting only documents with exactly one canonical form."""
    if len(data) > max_bytes:
        raise CanonicalError(f"document is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CanonicalError(f"invalid UTF-8 at byte {error.start}") from None
    check_nesting(data)
    try:
        value = _DECODER.decode(text)
    except CanonicalError:
        raise
    except ValueError as error:
        raise CanonicalError(f"not valid JSON: {error}") from None
    _check(value, 0)
    return value


_NOT_QUOTES_OR_BRACKETS = bytes(set(range(256)) - set(b'"[]{}'))
_ONE_KIND_OF_BRACKET = bytes.maketrans(b"{}", b"[]")


@functools.cache
def _nested_at_most(depth: int) -> re.Pattern[bytes]:
    """Balanced '[' and ']' nested at most `depth` deep: a regular language. The repeats are
    possessive, so a match is one pass over the input, with no backtracking whatever the input."""
    pattern = b""
    for _ in range(depth):
        pattern = rb"(?:\[" + pattern + rb"\])*+"
    return re.compile(pattern)


def check_nesting(data: bytes, limit: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than `limit` before a recursive decoder sees the document.

    The decoder's own limit follows the interpreter's recursion limit, which a program may raise
    far enough for a hostile document to overflow the C stack. Here, in time linear in the size of
    the document and without a Python loop over it: drop what is inside strings, keep only the
    brackets, and match them against `_nested_at_most(limit)`. `limit` is larger than MAX_DEPTH
    only for an envelope around a document (a frame whose `output` may itself be MAX_DEPTH deep).

    In JSON a backslash appears only in a string, where it escapes the next character. Without
    the escaped backslashes and then the escaped quotes, every quote left opens or closes a
    string, so what lies outside strings is every other piece between quotes.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.translate(None, _NOT_QUOTES_OR_BRACKETS).split(b'"')[::2])
    if brackets.count(b"[") != brackets.count(b"]") or brackets.count(b"{") != brackets.count(b"}"):
        raise CanonicalError("not valid JSON: unbalanced brackets")
    brackets = brackets.translate(_ONE_KIND_OF_BRACKET)
    within = _nested_at_most(limit).match(brackets)
    end = within.end() if within else 0  # it matches "" at least
    if end == len(brackets):
        return
    # The match stopped at a bracket: a ']' that closes nothing, or a '[' that opens a group nested
    # deeper than MAX_DEPTH somewhere inside.
    if brackets[end] == ord("]"):
        raise CanonicalError("not valid JSON: unbalanced brackets")
    raise CanonicalError(f"nesting deeper than {limit}")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of `value`."""
    parts: list[str] = []
    _encode(value, 0, parts)
    return "".join(parts).encode("utf-8")


def digest(value: Any) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def _reject_constant(name: str) -> Any:
    raise CanonicalError(f"{name} is not a JSON number")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise CanonicalError(f"duplicate object key {key!r}")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)


def _check_string(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise CanonicalError(f"lone surrogate in string {text!r}") from None


def _check_integer(number: int) -> None:
    if not -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        raise CanonicalError(f"integer {number} is beyond ±(2^53 − 1)")


def _check_float(number: float) -> None:
    if not math.isfinite(number):
        raise CanonicalError(f"{number} is not a finite number")


def _check(value: Any, depth: int) -> None:
    """Validate a value fresh from the decoder: the checks the decoder itself does not make."""
    kind = type(value)
    if kind is str:
        _check_string(value)
    elif kind is float:
        _check_float(value)
    elif kind is int:
        _check_integer(value)
    elif kind is dict or kind is list:
        depth += 1
        if depth > MAX_DEPTH:
            raise CanonicalError(f"nesting deeper than {MAX_DEPTH}")
        if kind is dict:
            for key, item in value.items():
                _check_string(key)
                _check(item, depth)
        elif _all_floats(value):
            # The decoder makes no NaN here (parse_constant refuses it), only ±inf from overflow.
            if value and max(map(abs, value)) == math.inf:
                raise CanonicalError("inf is not a finite number")
        else:
            for item in value:
                _check(item, depth)


def _utf16_order(key: str) -> bytes:
    return key.encode("utf-16-be")


def _encode(value: Any, depth: int, parts: list[str]) -> None:
    kind = type(value)
    if kind is str:
        _check_string(value)
        parts.append(_escape_string(value))
    elif kind is float:
        parts.append(format_number(value))
    elif kind is int:
        _check_integer(value)
        parts.append(str(value))
    elif kind is dict:
        depth = _enter(depth)
        try:
            keys = sorted(value, key=_utf16_order)
        except (TypeError, AttributeError):
            raise CanonicalError("object keys must be strings") from None
        except UnicodeEncodeError:
            raise CanonicalError("lone surrogate in an object key") from None
        separator = "{"
        for key in keys:
            parts.append(separator)
            parts.append(_escape_string(key))
            parts.append(":")
            _encode(value[key], depth, parts)
            separator = ","
        parts.append("}" if keys else "{}")
    elif kind is list or kind is tuple:
        depth = _enter(depth)
        if value and _all_floats(value):
            parts.append(_encode_floats(value))
            return
        separator = "["
        for item in value:
            parts.append(separator)
            _encode(item, depth, parts)
            separator = ","
        parts.append("]" if value else "[]")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif value is None:
        parts.append("null")
    else:
        raise CanonicalError(f"{kind.__name__} has no JSON form")


def _all_floats(items: list[Any] | tuple[Any, ...]) -> bool:
    return bool(items) and type(items[0]) is float and set(map(type, items)) == {float}


def _encode_floats(numbers: list[float] | tuple[float, ...]) -> str:
    """A JSON array of doubles (an embedding), at orjson's speed where its form is ECMAScript's.

    orjson writes the same shortest digits as ECMAScript, and the same text except for integral
    values ("2.0"), exponent forms ("2.5e-6"), and non-finite values ("null"): those, and only
    those, are rewritten by `format_number`.
    """
    text = orjson.dumps(numbers)
    if b"e" not in text and b"n" not in text and b".0," not in text and not text.endswith(b".0]"):
        return text.decode("ascii")
    tokens = text[1:-1].split(b",")
    return (
        "["
        + ",".join(
            format_number(number)
            if b"e" in token or b"n" in token or token.endswith(b".0")
            else token.decode()
            for token, number in zip(tokens, numbers, strict=True)
        )
        + "]"
    )


def _enter(depth: int) -> int:
    depth += 1
    if depth > MAX_DEPTH:
        raise CanonicalError(f"nesting deeper than {MAX_DEPTH}")
    return depth


def format_number(number: float) -> str:
    """ECMAScript's Number.prototype.toString of a finite double, as RFC 8785 §3.2.2.3 requires."""
    _check_float(number)
    if number == 0:
        return "0"
    if number.is_integer() and -1e16 < number < 1e16:
        # Below 10^16 every integral double is written out exactly, as ECMAScript does.
        return str(int(number))
    shortest = repr(number)
    if "e" not in shortest:
        return shortest
    mantissa, exponent_text = shortest.split("e")
    sign = ""
    if mantissa[0] == "-":
        sign, mantissa = "-", mantissa[1:]
    digits = mantissa.replace(".", "")
    # value = 0.<digits> × 10^point, in ECMAScript's terms (k digits, exponent n).
    point = int(exponent_text) + 1
    if len(digits) <= point <= 21:
        return sign + digits + "0" * (point - len(digits))
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    exponent = point - 1
    fraction = "." + digits[1:] if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{fraction}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
