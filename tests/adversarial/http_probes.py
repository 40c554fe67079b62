"""What a client can send, as Hypothesis strategies of raw HTTP/1.1 requests, each with the answers
docs/protocol.md §4 allows it.

The routes come from the orchestrator's own OpenAPI document, so a new endpoint is fuzzed too.
Bodies: bad JSON, nesting past 64, fields of the wrong type, numbers past 64 bits, undecodable
`Content-Encoding`; heads: malformed lines and headers, bad lengths, unsupported versions; wrong
methods and paths; requests cut short; WebSocket upgrades of the wrong kind.

`judge` says what is wrong with an answer: a status the probe does not allow, any 500 (or a 5xx
not documented), a 4xx or 5xx whose body is not the error envelope, a 405 without `Allow`.
"""

import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.adversarial.frame_probes import HEALTH_MODEL, json_values, nested
from tests.adversarial.wire import HttpAnswer

__all__ = ["DOCUMENTED", "HttpProbe", "http_probes", "judge"]

DOCUMENTED = frozenset({200, 400, 401, 403, 404, 405, 408, 413, 417, 426, 429, 502, 503, 504, 505})
SERVER_ERRORS = frozenset({502, 503, 504, 505})  # the only 5xx documented
# A GET of a documented path, with whatever its parameters are: found, refused, absent, or not ready.
GET_STATUSES = frozenset({200, 400, 401, 403, 404, 503})
CHAT_MESSAGES = [{"role": "user", "content": "hi"}]
BASE_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": HEALTH_MODEL, "messages": CHAT_MESSAGES},
    "/v1/completions": {"model": HEALTH_MODEL, "prompt": "hi"},
    "/v1/embeddings": {"model": HEALTH_MODEL, "input": "hi"},
    "/v1/jobs": {"model": HEALTH_MODEL, "task": "chat", "input": {"messages": CHAT_MESSAGES}},
}
# Values of the wrong type for each field a body's endpoint checks (docs/protocol.md §4).
not_a_string: list[Any] = [5, 1.5, True, ["x"], {"x": 1}]
not_an_integer: list[Any] = [1.5, "1", True, [1], {"n": 1}]
not_text_or_tokens: list[Any] = [5, 1.5, True, {"x": 1}, [1.5], [True], [["x"]], [[1.5]], [None], ["x", 1]]
WRONG_FIELDS: dict[str, dict[str, list[Any]]] = {
    "/v1/chat/completions": {
        "model": not_a_string,
        "messages": ["hi", 5, [1], ["x"], [[{"role": "user"}]], {"role": "user"}],
        "stream": ["yes", 1, 0, [True]],
        "n": not_an_integer,
    },
    "/v1/completions": {"model": not_a_string, "prompt": not_text_or_tokens, "stream": ["no", 1]},
    "/v1/embeddings": {
        "model": not_a_string,
        "input": not_text_or_tokens,
        "encoding_format": ["float32", "", 5, ["float"]],
    },
    "/v1/jobs": {
        "model": not_a_string,
        "task": [5, True, ["chat"]],
        "input": ["hi", 5, [1], True],
        "replicas": not_an_integer,
        "threshold": not_an_integer,
        "timeout_ms": not_an_integer,
    },
}
NUMBER_FIELDS = {  # the integer fields an endpoint checks; others go to the miners as they are
    "/v1/chat/completions": ["n"],
    "/v1/completions": ["n"],
    "/v1/jobs": ["replicas", "threshold", "timeout_ms"],
}
HUGE_NUMBERS = ["18446744073709551616", "-9223372036854775809", "1" + "0" * 400, "1e400", "-1e400", "1e-400"]


@dataclass(frozen=True)
class HttpProbe:
    label: str
    request: bytes
    statuses: frozenset[int]  # the statuses documented for it
    codes: frozenset[str] = frozenset()  # its error codes, where they are documented
    head: bool = False  # a HEAD request: no body comes back
    half_close: bool = False  # the client shuts its sending side after the request
    may_close: bool = False  # the server may close the connection without an answer

    @property
    def expected(self) -> str:
        if self.statuses == DOCUMENTED:
            return "any documented status"
        statuses = "/".join(str(status) for status in sorted(self.statuses))
        return " ".join([statuses, *sorted(self.codes)])


def judge(probe: HttpProbe, answer: HttpAnswer | None) -> str | None:
    """What is wrong with `answer` to `probe`, or None."""
    if answer is None:
        return None if probe.may_close else "closed without an answer"
    status = answer.status
    if status == 500 or (status >= 500 and status not in SERVER_ERRORS):
        return f"server error {status}"
    if status not in probe.statuses:
        return f"status {status}, not {probe.expected}"
    if status == 405 and "allow" not in answer.headers:
        return "405 without Allow"
    if status == 426 and answer.headers.get("sec-websocket-version") != "13":
        return "426 without Sec-WebSocket-Version: 13"
    if status < 400 or probe.head:
        return None
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return f"an error of type {answer.headers.get('content-type')!r}, not the JSON envelope"
    try:
        error = answer.json()["error"]
        fields_ok = all(isinstance(error[name], str) for name in ("message", "type", "code"))
    except (ValueError, KeyError, TypeError):
        return f"not the error envelope: {answer.body[:100]!r}"
    if not fields_ok:
        return f"an envelope with fields that are not strings: {answer.body[:100]!r}"
    if probe.codes and error["code"] not in probe.codes:
        return f"code {error['code']!r}, not {' or '.join(sorted(probe.codes))}"
    return None


def request(
    method: str,
    target: str,
    body: bytes | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    version: str = "HTTP/1.1",
) -> bytes:
    """A request's bytes: Host, then `headers`, then Content-Length when there is a body."""
    lines = [f"{method} {target} {version}", "Host: fuzz", *(f"{name}: {value}" for name, value in headers)]
    if body is not None and not any(
        name.lower() in ("content-length", "transfer-encoding") for name, _ in headers
    ):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _probe(
    label: str, raw: bytes, statuses: frozenset[int] | set[int], *codes: str, **options: Any
) -> HttpProbe:
    return HttpProbe(label, raw, frozenset(statuses), frozenset(codes), **options)


path_parts = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%{}"), max_size=30
)


def _filled(path: str, part: str) -> str:
    """`path` with each `{parameter}` replaced by `part` (or a word when `part` is empty)."""
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + (part or "x") + path[end + 1 :]
    return path


def http_probes(routes: list[tuple[str, str]], max_body_bytes: int) -> st.SearchStrategy[HttpProbe]:
    """Every probe class over `routes` ((method, path) pairs from the OpenAPI document)."""
    posts = sorted(path for method, path in routes if method == "POST")
    gets = sorted(path for method, path in routes if method == "GET")
    allowed: dict[str, set[str]] = {}
    for method, path in routes:
        allowed.setdefault(path, set()).add(method)
    post_paths = st.sampled_from(posts)
    checked_posts = st.sampled_from([path for path in posts if path in BASE_BODIES])

    @st.composite
    def gets_(draw: st.DrawFn) -> HttpProbe:
        target = _filled(draw(st.sampled_from(gets)), draw(path_parts))
        if draw(st.booleans()):
            target += "?" + draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30))
        return _probe("GET a documented path", request("GET", target), GET_STATUSES)

    @st.composite
    def bad_json(draw: st.DrawFn) -> HttpProbe:
        path = draw(post_paths)
        body = draw(
            st.one_of(
                st.just(b""),
                st.binary(max_size=200).filter(lambda data: not data.strip().startswith(b"{")),
                st.tuples(st.just(_json(BASE_BODIES.get(path, {"x": 1}))), st.integers(1, 40)).map(
                    lambda pair: pair[0][: -pair[1]]
                ),
                st.sampled_from(
                    [b"NaN", b"[1,2]", b'"text"', b"null", b"{'a':1}", b'{"a":NaN}', b'{"a":"\xff"}']
                ),
            )
        )
        return _probe("POST bad JSON", request("POST", path, body), {400}, "invalid_json")

    @st.composite
    def deep(draw: st.DrawFn) -> HttpProbe:
        path, depth = draw(post_paths), draw(st.integers(65, 5000))
        body = b'{"model":"' + HEALTH_MODEL.encode() + b'","x":' + nested(depth - 1).encode() + b"}"
        return _probe("POST nested past 64", request("POST", path, body), {400}, "invalid_json")

    @st.composite
    def wrong_field(draw: st.DrawFn) -> HttpProbe:
        path = draw(checked_posts)
        name = draw(st.sampled_from(sorted(WRONG_FIELDS[path])))
        value = draw(st.sampled_from(WRONG_FIELDS[path][name]))
        body = _json(BASE_BODIES[path] | {name: value})
        return _probe(f"POST {name} of a wrong type", request("POST", path, body), {400}, "invalid_field")

    @st.composite
    def missing_field(draw: st.DrawFn) -> HttpProbe:
        path = draw(checked_posts)
        name = draw(st.sampled_from(sorted(BASE_BODIES[path])))
        body = {key: value for key, value in BASE_BODIES[path].items() if key != name}
        if draw(st.booleans()):
            body[name] = None
        raw = request("POST", path, _json(body))
        return _probe("POST a required field missing", raw, {400}, "missing_field")

    @st.composite
    def huge_number(draw: st.DrawFn) -> HttpProbe:
        path = draw(st.sampled_from(sorted(NUMBER_FIELDS)))
        name = draw(st.sampled_from(NUMBER_FIELDS[path]))
        body = _json(BASE_BODIES[path])[:-1] + f',"{name}":{draw(st.sampled_from(HUGE_NUMBERS))}}}'.encode()
        return _probe("POST a number past 64 bits", request("POST", path, body), {400})

    @st.composite
    def valid_looking(draw: st.DrawFn) -> HttpProbe:
        path = draw(post_paths)
        body = dict(BASE_BODIES.get(path, {}))
        body["model"] = draw(st.sampled_from([HEALTH_MODEL, "no-such-model"]) | st.text(max_size=20))
        body |= draw(
            st.dictionaries(
                st.sampled_from(["temperature", "max_tokens", "user", "seed", "stop"]), json_values
            )
        )
        return _probe("POST a valid-looking body", request("POST", path, _json(body)), DOCUMENTED)

    @st.composite
    def encoded(draw: st.DrawFn) -> HttpProbe:
        path = draw(post_paths)
        kinds = ["gzip garbage", "deflate garbage", "gzip bomb", "gzip valid", "unknown encoding"]
        kind = draw(st.sampled_from(kinds))
        body, encoding, statuses, codes = b"", "gzip", DOCUMENTED, ()
        if kind in ("gzip garbage", "deflate garbage"):  # a stream cut short decodes to nothing
            body, encoding = draw(st.binary(min_size=1, max_size=100)), kind.split()[0]
            statuses, codes = {400}, ("invalid_body", "invalid_json")
        elif kind == "gzip bomb":  # small on the wire, past max_body_bytes once decoded
            body, statuses, codes = gzip.compress(b" " * (max_body_bytes + 10)), {413}, ("request_too_large",)
        elif kind == "gzip valid":
            body = gzip.compress(_json(BASE_BODIES.get(path, {})))
        else:
            body, encoding = zlib.compress(b"{}"), draw(st.sampled_from(["compress", "x-fuzz", "identity"]))
        headers = (("Content-Encoding", encoding),)
        return _probe(f"POST a body: {kind}", request("POST", path, body, headers), statuses, *codes)

    @st.composite
    def too_large(draw: st.DrawFn) -> HttpProbe:
        path = draw(post_paths)
        if draw(st.booleans()):  # declared too large: refused before the body is read
            headers = (("Content-Length", str(max_body_bytes + draw(st.integers(1, 10**12)))),)
            raw = request("POST", path, None, headers) + b'{"model":'
            return _probe(
                "POST Content-Length over the limit", raw, {413}, "request_too_large", may_close=True
            )
        size = max_body_bytes + draw(st.integers(1, 1000))
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(part), part) for part in (b" " * 65_536,) * (size // 65_536 + 1)
        )
        raw = request("POST", path, None, (("Transfer-Encoding", "chunked"),)) + chunks + b"0\r\n\r\n"
        return _probe("POST a chunked body over the limit", raw, {413}, "request_too_large", may_close=True)

    @st.composite
    def malformed_head(draw: st.DrawFn) -> HttpProbe:
        path = draw(st.sampled_from(gets + posts))
        kind = draw(
            st.sampled_from(
                [
                    "a header without a colon",
                    "a bad header name",
                    "a folded header",
                    "a control byte in a header",
                    "a bad Content-Length",
                    "two Content-Lengths",
                    "Transfer-Encoding with Content-Length",
                    "an unknown Transfer-Encoding",
                    "a request line too long",
                    "a header too long",
                    "too many headers",
                    "a bad method",
                    "HTTP/1.2",
                    "not HTTP",
                ]
            )
        )
        head = f"GET {path} HTTP/1.1\r\nHost: fuzz\r\n"
        post = f"POST {path} HTTP/1.1\r\nHost: fuzz\r\n"
        if kind == "a header without a colon":
            raw = (
                head
                + draw(
                    st.text(
                        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
                        min_size=1,
                        max_size=20,
                    )
                )
                + "\r\n\r\n"
            )
        elif kind == "a bad header name":
            raw = head + draw(st.sampled_from(["X Y", "X@Y", "X(Y)", 'X"Y', "", "X\tY"])) + ": 1\r\n\r\n"
        elif kind == "a folded header":
            raw = head + "X-A: 1\r\n  folded\r\n\r\n"
        elif kind == "a control byte in a header":
            raw = head + "X-A: 1" + draw(st.sampled_from(["\x00", "\x01", "\x7f", "\r"])) + "2\r\n\r\n"
        elif kind == "a bad Content-Length":
            value = draw(st.sampled_from(["abc", "-1", "1 1", "+5", "0x10", "1.5", " ", "9" * 30]))
            raw = post + f"Content-Length: {value}\r\n\r\n{{}}"
        elif kind == "two Content-Lengths":
            raw = post + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}x"
        elif kind == "Transfer-Encoding with Content-Length":
            raw = post + "Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}"
        elif kind == "an unknown Transfer-Encoding":
            value = draw(st.sampled_from(["gzip", "chunked, gzip", "x-fuzz", "chunked;q=1", "identity"]))
            raw = post + f"Transfer-Encoding: {value}\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        elif kind == "a request line too long":
            raw = f"GET {path}?{'a' * draw(st.integers(8200, 20_000))} HTTP/1.1\r\nHost: fuzz\r\n\r\n"
        elif kind == "a header too long":
            raw = head + "X-Pad: " + "a" * draw(st.integers(8200, 20_000)) + "\r\n\r\n"
        elif kind == "too many headers":
            raw = head + "X-Pad: 1\r\n" * draw(st.integers(130, 400)) + "\r\n"
        elif kind == "a bad method":
            method = draw(st.sampled_from(["G@T", "GET\x00", "(GET)", "GE T", "\x16\x03\x01"]))
            raw = f"{method} {path} HTTP/1.1\r\nHost: fuzz\r\n\r\n"
        elif kind == "HTTP/1.2":
            version = draw(
                st.sampled_from(["HTTP/1.2", "HTTP/3.0", "HTTP/1.10", "HTTP/11", "FOO/1.1", "http/1.1"])
            )
            raw = f"GET {path} {version}\r\n\r\n"
        else:
            raw = (
                draw(st.binary(min_size=1, max_size=100).filter(lambda data: b" " not in data[:8])).decode(
                    "latin-1"
                )
                + "\r\n\r\n"
            )
        return _probe(f"a malformed head: {kind}", raw.encode("latin-1"), {400}, "invalid_request")

    @st.composite
    def odd_headers(draw: st.DrawFn) -> HttpProbe:
        path = draw(st.sampled_from(gets))
        name, value = draw(
            st.sampled_from(
                [
                    ("Content-Type", "text/\x80\xff"),
                    ("Accept", "*/*;q=abc"),
                    ("Authorization", "Bearer \x80"),
                    ("Authorization", "Basic"),
                    ("Connection", "upgrade"),
                    ("Connection", "close, keep-alive"),
                    ("Host", "fuzz"),
                    ("Host", ""),
                    ("X-Forwarded-For", "1.2.3.4, <script>"),
                    ("Expect", "100-continue"),
                    ("Cookie", "a=" + "b" * 4000),
                ]
            )
        )
        return _probe(
            f"GET with an odd {name}", request("GET", _filled(path, ""), None, ((name, value),)), DOCUMENTED
        )

    @st.composite
    def expect(draw: st.DrawFn) -> HttpProbe:
        path = draw(post_paths)
        value = draw(st.sampled_from(["fuzz", "200-ok", "100-continue, fuzz"]))
        raw = request("POST", path, b"{}", (("Expect", value),))
        return _probe("POST with an Expect other than 100-continue", raw, {417}, "expectation_failed")

    @st.composite
    def wrong_method(draw: st.DrawFn) -> HttpProbe:
        path = draw(st.sampled_from(sorted(allowed)))
        served = allowed[path] | ({"HEAD"} if "GET" in allowed[path] else set())  # GET routes answer HEAD
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD"]
        method = draw(st.sampled_from([name for name in methods if name not in served]))
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        raw = request(method, _filled(path, ""), body)
        head = method == "HEAD"
        return _probe("a method the path does not take", raw, {405}, "method_not_allowed", head=head)

    @st.composite
    def unknown_method(draw: st.DrawFn) -> HttpProbe:
        path = _filled(draw(st.sampled_from(sorted(allowed))), "")
        method = draw(st.sampled_from(["FUZZ", "BREW", "QUERYX", "get"]))
        return _probe("a method HTTP does not define", request(method, path), {400}, "invalid_request")

    @st.composite
    def unknown_path(draw: st.DrawFn) -> HttpProbe:
        target = "/" + draw(
            path_parts.filter(lambda part: "/" + part not in allowed and not part.startswith("v1"))
        )
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "HEAD"]))
        raw = request(method, target, b"{}" if method == "POST" else None)
        return _probe("an unknown path", raw, {404}, "not_found", head=method == "HEAD")

    @st.composite
    def odd_target(draw: st.DrawFn) -> HttpProbe:
        path = draw(st.sampled_from(gets))
        target = draw(
            st.sampled_from(
                [
                    path + "%00",
                    path + "%0A",
                    path.replace("/", "%2F"),
                    "/.." + path,
                    "//" + path.lstrip("/"),
                    path + "/",
                    "http://fuzz" + path,
                    "*",
                    path + "#frag",
                    path + "?%zz=%",
                ]
            )
        )
        return _probe("an odd request target", request("GET", _filled(target, "")), DOCUMENTED)

    @st.composite
    def versions(draw: st.DrawFn) -> HttpProbe:
        path = _filled(draw(st.sampled_from(gets)), "")
        version = draw(st.sampled_from(["HTTP/1.0", "HTTP/0.9", "HTTP/2.0"]))
        if version == "HTTP/1.0":
            return _probe("HTTP/1.0", request("GET", path, version=version), GET_STATUSES)
        return _probe(
            f"{version} in HTTP/1 syntax",
            request("GET", path, version=version),
            {505},
            "http_version_not_supported",
        )

    @st.composite
    def cut_short(draw: st.DrawFn) -> HttpProbe:
        path = draw(post_paths)
        whole = request("POST", path, _json(BASE_BODIES.get(path, {})))
        cut = draw(st.integers(1, len(whole) - 1))
        return _probe("a request cut short", whole[:cut], DOCUMENTED, half_close=True, may_close=True)

    @st.composite
    def upgrades(draw: st.DrawFn) -> HttpProbe:
        version = draw(st.sampled_from(["13", "8", "7", "0", "", "13, 8"]))
        key = draw(st.sampled_from(["dGhlIHNhbXBsZSBub25jZQ==", "", "not base64!", "c2hvcnQ="]))
        upgrade = draw(st.sampled_from(["websocket", "WebSocket", "h2c", ""]))
        headers = [("Upgrade", upgrade), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key)]
        if version:
            headers.append(("Sec-WebSocket-Version", version))
        raw = request("GET", "/v1/workers/connect", None, tuple(headers))
        if version != "13":
            return _probe("a WebSocket upgrade of another version", raw, {426}, "upgrade_required")
        good = key == "dGhlIHNhbXBsZSBub25jZQ==" and upgrade.lower() == "websocket"
        if good:
            return _probe("a WebSocket upgrade", raw, {101})
        return _probe("a WebSocket upgrade with a bad handshake", raw, {400}, "bad_request")

    return st.one_of(
        gets_(),
        bad_json(),
        deep(),
        wrong_field(),
        missing_field(),
        huge_number(),
        valid_looking(),
        encoded(),
        too_large(),
        malformed_head(),
        odd_headers(),
        expect(),
        wrong_method(),
        unknown_method(),
        unknown_path(),
        odd_target(),
        versions(),
        cut_short(),
        upgrades(),
    )
