"""The HTTP fuzzer's judge: what it takes as a documented answer, and what it reports."""

import orjson

from tests.adversarial.http_probes import DOCUMENTED, HttpProbe, judge
from tests.adversarial.wire import HttpAnswer

JSON = {"content-type": "application/json"}


def envelope(code: str) -> bytes:
    return orjson.dumps({"error": {"message": "m", "type": "invalid_request_error", "code": code}})


PROBE = HttpProbe("a probe", b"", frozenset({400}), frozenset({"invalid_json"}))


def test_the_documented_answer_passes() -> None:
    assert judge(PROBE, HttpAnswer(400, JSON, envelope("invalid_json"))) is None
    assert PROBE.expected == "400 invalid_json"
    assert HttpProbe("any", b"", DOCUMENTED).expected == "any documented status"


def test_every_way_an_answer_can_be_wrong_is_named() -> None:
    problems = {
        "status 404, not 400 invalid_json": HttpAnswer(404, JSON, envelope("not_found")),
        "server error 500": HttpAnswer(500, JSON, envelope("internal_error")),
        "an error of type 'text/plain', not the JSON envelope": HttpAnswer(
            400, {"content-type": "text/plain"}, b"400: Bad Request"
        ),
        "not the error envelope: b'{}'": HttpAnswer(400, JSON, b"{}"),
        "code 'invalid_field', not invalid_json": HttpAnswer(400, JSON, envelope("invalid_field")),
        "closed without an answer": None,
    }
    for problem, answer in problems.items():
        assert judge(PROBE, answer) == problem
    allow = HttpProbe("405", b"", frozenset({405}))
    assert judge(allow, HttpAnswer(405, JSON, envelope("method_not_allowed"))) == "405 without Allow"
    cut = HttpProbe("cut", b"", DOCUMENTED, may_close=True)
    assert judge(cut, None) is None
