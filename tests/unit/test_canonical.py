"""Canonical JSON: the RFC 8785 vectors, the ES6 number lines, every rejection, and equality with rfc8785."""

import hashlib
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from krewe.protocol.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    CanonicalError,
    canonical_json,
    check_nesting,
    digest,
    format_number,
    parse_strict,
)

JCS = Path(__file__).parent.parent / "data" / "jcs"
VECTORS = sorted(path.stem for path in (JCS / "input").glob("*.json"))


def test_all_six_rfc_vectors_are_present() -> None:
    assert VECTORS == ["arrays", "french", "structures", "unicode", "values", "weird"]


@pytest.mark.parametrize("name", VECTORS)
def test_rfc_vector(name: str) -> None:
    document = (JCS / "input" / f"{name}.json").read_bytes()
    expected = (JCS / "output" / f"{name}.json").read_bytes()
    assert canonical_json(json.loads(document)) == expected
    assert expected.hex() == (JCS / "outhex" / f"{name}.txt").read_text().replace(" ", "").replace("\n", "")


def test_es6_number_lines() -> None:
    lines = (JCS / "es6testfile10k.txt").read_text().splitlines()
    assert len(lines) == 10_000
    wrong = []
    for line in lines:
        bits, expected = line.split(",")
        number = struct.unpack(">d", struct.pack(">Q", int(bits, 16)))[0]
        if format_number(number) != expected:
            wrong.append((bits, expected, format_number(number)))
    assert wrong == []


def test_digest_is_lowercase_sha256_of_canonical_bytes() -> None:
    assert digest({"b": 1, "a": [1.0, "x"]}) == hashlib.sha256(b'{"a":[1,"x"],"b":1}').hexdigest()
    assert digest({"b": 1, "a": [1.0, "x"]}) == digest({"a": [1, "x"], "b": 1})


def test_keys_sort_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is D83D DE00 in UTF-16, before U+FB01; by code point it would come after.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'.encode()


# Every rejection of parse_strict, each with the words a person reads.
@pytest.mark.parametrize(
    ("document", "words"),
    [
        (b'"\xff"', "invalid UTF-8"),
        (b"NaN", "NaN is not a JSON number"),
        (b"[Infinity]", "Infinity is not a JSON number"),
        (b"-Infinity", "-Infinity is not a JSON number"),
        (b"1e400", "inf is not a finite number"),
        (b'{"a":1,"a":2}', "duplicate object key 'a'"),
        (b'{"x":{"k":1,"k":1}}', "duplicate object key 'k'"),
        (b'"\\ud800"', "lone surrogate"),
        (b'{"\\udc00":1}', "lone surrogate"),
        (b"9007199254740992", "beyond"),
        (b"[-9007199254740992]", "beyond"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"nesting deeper than {MAX_DEPTH}"),
        (b"[" * 100_000, "unbalanced brackets"),
        (b"[" * 100_000 + b"}" * 100_000, "unbalanced brackets"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, f"nesting deeper than {MAX_DEPTH}"),
        (b"{", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"1" * 5000, "not valid JSON"),
    ],
)
def test_parse_strict_rejects(document: bytes, words: str) -> None:
    with pytest.raises(CanonicalError, match=words.replace("(", r"\(")):
        parse_strict(document, max_bytes=1_000_000)


def test_parse_strict_checks_size_before_parsing() -> None:
    with pytest.raises(CanonicalError, match="over the limit of 10"):
        parse_strict(b"[" * 11, max_bytes=10)  # would be invalid JSON too: size is reported first


def test_parse_strict_refuses_deep_nesting_whatever_the_recursion_limit() -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)  # as some libraries do; the decoder would overflow the C stack
    try:
        with pytest.raises(CanonicalError, match="nesting deeper"):
            parse_strict(b"[" * 500_000 + b"]" * 500_000, max_bytes=2_000_000)
    finally:
        sys.setrecursionlimit(limit)


def mixed(depth: int) -> bytes:
    """Objects and lists alternating, `depth` deep (even)."""
    return b'[{"a":' * (depth // 2) + b"1" + b"}]" * (depth // 2)


def list_in_object(depth: int) -> bytes:
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_check_nesting_counts_every_level_of_lists_and_objects_mixed() -> None:
    check_nesting(mixed(MAX_DEPTH))
    check_nesting(list_in_object(MAX_DEPTH))
    for document in (mixed(MAX_DEPTH + 2), list_in_object(MAX_DEPTH + 1)):
        with pytest.raises(CanonicalError, match=f"nesting deeper than {MAX_DEPTH}"):
            check_nesting(document)


@given(
    st.lists(st.booleans(), min_size=MAX_DEPTH - 2, max_size=MAX_DEPTH + 2),
    st.text(alphabet='[]{}"\\a', max_size=6),
)
def test_check_nesting_agrees_with_the_depth_of_the_decoded_document(levels: list[bool], text: str) -> None:
    value: Any = text
    for is_list in levels:  # each level holds the next, beside a string of brackets, quotes, backslashes
        value = [text, value] if is_list else {text: value, "b": text}
    document = json.dumps(value).encode()
    if len(levels) <= MAX_DEPTH:
        check_nesting(document)
    else:
        with pytest.raises(CanonicalError, match=f"nesting deeper than {MAX_DEPTH}"):
            check_nesting(document)


def test_check_nesting_tells_unbalanced_brackets() -> None:
    for document in (b"]" * 70 + b"[" * 70, b"[" * 70 + b"]" * 69, b"[]" * 40 + b"][" + b"[]" * 40):
        with pytest.raises(CanonicalError, match="unbalanced brackets"):
            check_nesting(document)


def test_parse_strict_accepts_the_limits() -> None:
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_strict(deepest, max_bytes=1000) is not None
    many = b"[" + b",".join([b'[[],{"[":"]]]]"}]'] * 100) + b"]"  # many brackets, shallow; some in strings
    assert len(parse_strict(many, max_bytes=10_000)) == 100
    assert parse_strict(str(MAX_SAFE_INTEGER).encode(), max_bytes=100) == MAX_SAFE_INTEGER
    assert parse_strict(str(-MAX_SAFE_INTEGER).encode(), max_bytes=100) == -MAX_SAFE_INTEGER
    assert parse_strict('{"é":"\\ud83d\\ude00"}'.encode(), max_bytes=100) == {"é": "\U0001f600"}


def test_canonical_json_refuses_what_has_no_canonical_form() -> None:
    for value in (
        [1.5, math.inf],
        [math.nan],
        (0.5, -math.inf),
        math.nan,
        math.inf,
        -math.inf,
        MAX_SAFE_INTEGER + 1,
        "\ud800",
        {1: 2},
        {"\udfff": 1},
        b"x",
    ):
        with pytest.raises(CanonicalError):
            canonical_json(value)
    nested: Any = []
    for _ in range(MAX_DEPTH):
        nested = [nested]
    with pytest.raises(CanonicalError, match="nesting deeper"):
        canonical_json(nested)


# Equality with the reference implementation over generated values.
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
safe_integers = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
texts = st.text(st.characters(exclude_categories=["Cs"]))  # any code point but surrogates
scalars = st.none() | st.booleans() | safe_integers | finite_floats | texts
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(texts, children, max_size=6),
    max_leaves=40,
)


@settings(max_examples=600, deadline=None)
@given(json_values)
def test_equal_to_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


def _has_large_integral_float(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer() and abs(value) > MAX_SAFE_INTEGER
    if isinstance(value, list):
        return any(_has_large_integral_float(item) for item in value)
    if isinstance(value, dict):
        return any(_has_large_integral_float(item) for item in value.values())
    return False


@settings(max_examples=300, deadline=None)
@given(
    st.lists(finite_floats | st.sampled_from([0.0, -0.0, 1.0, 2.5e-6, 1e-7, 1e21, 1e16, 5e-324]), min_size=1)
)
def test_float_arrays_equal_to_rfc8785(numbers: list[float]) -> None:
    assert canonical_json(numbers) == rfc8785.dumps(numbers)
    assert canonical_json({"data": [{"embedding": numbers}]}) == rfc8785.dumps(
        {"data": [{"embedding": numbers}]}
    )


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_strict_round_trips_canonical_bytes(value: Any) -> None:
    # An integral double of 2^53 or more is written as an integer literal, which parse_strict
    # refuses by design (PROTOCOL.md §1.2): such values do not round-trip, and need not.
    assume(not _has_large_integral_float(value))
    encoded = canonical_json(value)
    assert canonical_json(parse_strict(encoded, max_bytes=len(encoded))) == encoded


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_every_double_formats_as_rfc8785(bits: int) -> None:
    number = struct.unpack(">d", struct.pack(">Q", bits))[0]
    if math.isfinite(number):
        assert format_number(number).encode() == rfc8785.dumps(number)
