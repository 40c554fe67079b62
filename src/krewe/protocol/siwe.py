"""Sign-In with Ethereum (EIP-4361): the login message of protocol version 2, pure.

The orchestrator issues a `Challenge` (the EIP-4361 fields without the address); the miner
builds `challenge.message_for(its address)`, the exact text any conforming EIP-4361 library
writes for those fields, and signs it with EIP-191 `personal_sign`. The orchestrator `verify`s
the text it gets back: it parses the text strictly, compares every field with what it issued,
checks the times against a `now` it is given, and recovers the signer.

Everything here is pure (no I/O, no clock) and every refusal is a `SiweError` whose message can
be sent to a miner's operator as is.

Grammar (EIP-4361, lines separated by LF, no trailing LF; the field labels are case-sensitive):

    [ scheme "://" ] domain " wants you to sign in with your Ethereum account:"
    address                           EIP-55 checksummed
    (empty line)
    [ statement LF ]                  no LF; RFC 3986 reserved / unreserved characters and space
    (empty line)
    "URI: " uri                       RFC 3986 URI
    "Version: 1"
    "Chain ID: " chain-id             decimal
    "Nonce: " nonce                   at least 8 letters or digits
    "Issued At: " date-time           RFC 3339
    [ "Expiration Time: " date-time ]
    [ "Not Before: " date-time ]
    [ "Request ID: " *pchar ]
    [ "Resources:" *( LF "- " uri ) ]

Where this reads stricter than the grammar: a chain id has no leading zeros (so every message
has one text, the one `to_text` writes), a message is at most `MAX_MESSAGE_BYTES`, and the
domain's host is not empty.
"""

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address

__all__ = [
    "MAX_MESSAGE_BYTES",
    "STATEMENT",
    "Challenge",
    "SiweError",
    "SiweMessage",
    "format_time",
    "parse",
    "parse_time",
    "recover_signer",
    "to_text",
    "verify",
]

STATEMENT = "Log in to serve inference jobs as a krewe worker."
MAX_MESSAGE_BYTES = 4096

_HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"
# The order of the field lines after the statement; the first five are mandatory.
_URI, _VERSION, _CHAIN_ID, _NONCE, _ISSUED_AT = "URI", "Version", "Chain ID", "Nonce", "Issued At"
_EXPIRATION_TIME, _NOT_BEFORE, _REQUEST_ID = "Expiration Time", "Not Before", "Request ID"
_RESOURCES = "Resources:"
_RESOURCE_PREFIX = "- "

# secp256k1 group order; EIP-2 admits only s <= n/2 so that each signature has one form.
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SIGNATURE_HEX_DIGITS = 130

# RFC 3986 (appendix A), written with ASCII classes only.
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT_ENCODED = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT_ENCODED})"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_AUTHORITY = (
    rf"(?:(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT_ENCODED})*@)?"
    rf"(?:\[(?P<ip_literal>[^\]]*)\]|(?P<reg_name>(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT_ENCODED})*))"
    r"(?::[0-9]*)?"
)
_SEGMENT = rf"{_PCHAR}*"
_SEGMENT_NZ = rf"{_PCHAR}+"
_HIER_PART = (
    rf"(?://{_AUTHORITY}(?:/{_SEGMENT})*"  # "//" authority path-abempty
    rf"|/(?:{_SEGMENT_NZ}(?:/{_SEGMENT})*)?"  # path-absolute
    rf"|{_SEGMENT_NZ}(?:/{_SEGMENT})*"  # path-rootless
    r"|)"  # path-empty
)
_QUERY_OR_FRAGMENT = rf"(?:{_PCHAR}|[/?])*"
_URI_PATTERN = re.compile(rf"{_SCHEME}:{_HIER_PART}(?:\?{_QUERY_OR_FRAGMENT})?(?:#{_QUERY_OR_FRAGMENT})?")
_AUTHORITY_PATTERN = re.compile(_AUTHORITY)
_SCHEME_PATTERN = re.compile(_SCHEME)
_IP_FUTURE_PATTERN = re.compile(rf"v[0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+")
_STATEMENT_PATTERN = re.compile(rf"[{_UNRESERVED}:/?#\[\]@{_SUB_DELIMS} ]*")
_REQUEST_ID_PATTERN = re.compile(rf"{_PCHAR}*")
_ADDRESS_PATTERN = re.compile(r"0x[0-9A-Fa-f]{40}")
_NONCE_PATTERN = re.compile(r"[A-Za-z0-9]{8,}")
_CHAIN_ID_PATTERN = re.compile(r"0|[1-9][0-9]*")
_SIGNATURE_PATTERN = re.compile(r"[0-9A-Fa-f]*")
# RFC 3339 date-time; "T" and "Z" are case-insensitive there, as in all ABNF.
_DATE_TIME_PATTERN = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?"
    r"(?:[Zz]|(?P<offset_sign>[+-])(?P<offset_hour>[0-9]{2}):(?P<offset_minute>[0-9]{2}))"
)
_QUOTED_LENGTH = 80


class SiweError(ValueError):
    """A Sign-In with Ethereum message or signature refused; the message says why, for people."""


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds (truncated), as EIP-4361 libraries write it.

    For example `2026-11-27T13:30:00.123Z`.
    """
    if moment.tzinfo is None:
        raise ValueError("format_time needs a timezone-aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """The UTC moment an RFC 3339 date-time names; SiweError if `text` is not one.

    A leap second (second 60) is read as the first instant of the next minute, and digits of
    the fraction past microseconds are dropped, since a datetime holds neither.
    """
    match = _DATE_TIME_PATTERN.fullmatch(text)
    if match is None:
        raise SiweError(f"{_quote(text)} is not an RFC 3339 date-time such as 2026-11-27T13:30:00.123Z")
    second = int(match["second"])
    offset_hour, offset_minute = int(match["offset_hour"] or 0), int(match["offset_minute"] or 0)
    if second > 60 or offset_hour > 23 or offset_minute > 59:
        raise SiweError(f"{_quote(text)} is not a valid RFC 3339 date-time")
    offset = timedelta(hours=offset_hour, minutes=offset_minute)
    microsecond = int((match["fraction"] or "")[:6].ljust(6, "0"))
    try:
        moment = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            min(second, 59),
            microsecond,
            tzinfo=timezone(-offset if match["offset_sign"] == "-" else offset),
        )
    except ValueError:
        raise SiweError(f"{_quote(text)} is not a valid RFC 3339 date-time") from None
    if second == 60:
        moment += timedelta(seconds=1)
    return moment.astimezone(UTC)


@dataclass(frozen=True, kw_only=True)
class SiweMessage:
    """Every field of an EIP-4361 message, times as the exact text of the message.

    Constructing one checks each field against the grammar, so `to_text` always writes a
    message that `parse` reads back equal.
    """

    domain: str
    address: str
    statement: str | None = None
    uri: str
    version: str = "1"
    chain_id: int
    nonce: str
    issued_at: str
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] | None = None
    scheme: str | None = None

    def __post_init__(self) -> None:
        if self.scheme is not None and not _SCHEME_PATTERN.fullmatch(self.scheme):
            raise SiweError(f"the scheme {_quote(self.scheme)} is not an RFC 3986 scheme")
        _check_domain(self.domain)
        _check_address(self.address)
        if self.statement is not None and not _STATEMENT_PATTERN.fullmatch(self.statement):
            raise SiweError(
                f"the statement {_quote(self.statement)} has a character EIP-4361 does not allow"
                " (a line break, or one outside RFC 3986's reserved and unreserved sets and space)"
            )
        _check_uri("URI", self.uri)
        if self.version != "1":
            raise SiweError(f"Version must be 1, not {_quote(self.version)}")
        if isinstance(self.chain_id, bool) or not isinstance(self.chain_id, int) or self.chain_id < 0:
            raise SiweError(f"Chain ID must be a non-negative integer, not {self.chain_id!r}")
        if not _NONCE_PATTERN.fullmatch(self.nonce):
            raise SiweError(f"the nonce {_quote(self.nonce)} is not at least 8 letters or digits")
        for label, value in (
            (_ISSUED_AT, self.issued_at),
            (_EXPIRATION_TIME, self.expiration_time),
            (_NOT_BEFORE, self.not_before),
        ):
            if value is not None:
                try:
                    parse_time(value)
                except SiweError as error:
                    raise SiweError(f"{label}: {error}") from None
        if self.request_id is not None and not _REQUEST_ID_PATTERN.fullmatch(self.request_id):
            raise SiweError(f"the request id {_quote(self.request_id)} is not a sequence of RFC 3986 pchar")
        for resource in self.resources or ():
            _check_uri("the resource", resource)


def to_text(message: SiweMessage) -> str:
    """The EIP-4361 text of `message`, byte for byte what other conforming libraries write."""
    header = f"{message.domain}{_HEADER_SUFFIX}"
    if message.scheme is not None:
        header = f"{message.scheme}://{header}"
    lines = [header, message.address, ""]
    if message.statement is not None:
        lines.append(message.statement)
    lines += [
        "",
        f"{_URI}: {message.uri}",
        f"{_VERSION}: {message.version}",
        f"{_CHAIN_ID}: {message.chain_id}",
        f"{_NONCE}: {message.nonce}",
        f"{_ISSUED_AT}: {message.issued_at}",
    ]
    for label, value in (
        (_EXPIRATION_TIME, message.expiration_time),
        (_NOT_BEFORE, message.not_before),
        (_REQUEST_ID, message.request_id),
    ):
        if value is not None:
            lines.append(f"{label}: {value}")
    if message.resources is not None:
        lines.append(_RESOURCES)
        lines += [f"{_RESOURCE_PREFIX}{resource}" for resource in message.resources]
    return "\n".join(lines)


def parse(text: str) -> SiweMessage:
    """Read an EIP-4361 message strictly: every line in its place, nothing before or after."""
    if len(text) > MAX_MESSAGE_BYTES:
        raise SiweError(f"the message is {len(text)} characters long, over the limit of {MAX_MESSAGE_BYTES}")
    if not text.isascii():
        position = next(index for index, character in enumerate(text) if not character.isascii())
        raise SiweError(f"the message has a non-ASCII character at offset {position}, which EIP-4361 forbids")
    if "\r" in text:
        raise SiweError("the message has a carriage return; EIP-4361 lines end with a line feed alone")
    lines = _Lines(text.split("\n"))

    header = lines.take("the header line")
    if not header.endswith(_HEADER_SUFFIX):
        raise SiweError(f"line 1 must end with {_HEADER_SUFFIX!r}; it is {_quote(header)}")
    scheme_and_domain = header.removesuffix(_HEADER_SUFFIX)
    scheme: str | None = None
    if "://" in scheme_and_domain:
        scheme, scheme_and_domain = scheme_and_domain.split("://", 1)
    address = lines.take("the address line")
    lines.take_empty()
    statement: str | None = None
    if lines.peek() != "":
        statement = lines.take("the statement line")
    elif lines.peek(1) == "":
        # An empty statement: the statement line and the line after it are both empty.
        statement = lines.take("the statement line")
    lines.take_empty()

    uri = lines.take_field(_URI)
    version = lines.take_field(_VERSION)
    chain_id_text = lines.take_field(_CHAIN_ID)
    if not _CHAIN_ID_PATTERN.fullmatch(chain_id_text):
        raise SiweError(
            f"Chain ID must be a decimal number without leading zeros, not {_quote(chain_id_text)}"
        )
    nonce = lines.take_field(_NONCE)
    issued_at = lines.take_field(_ISSUED_AT)
    expiration_time = lines.take_optional_field(_EXPIRATION_TIME)
    not_before = lines.take_optional_field(_NOT_BEFORE)
    request_id = lines.take_optional_field(_REQUEST_ID)
    resources: tuple[str, ...] | None = None
    if lines.peek() == _RESOURCES:
        lines.take(_RESOURCES)
        resources = tuple(lines.take_resources())
    lines.expect_end()

    return SiweMessage(
        scheme=scheme,
        domain=scheme_and_domain,
        address=address,
        statement=statement,
        uri=uri,
        version=version,
        chain_id=int(chain_id_text),
        nonce=nonce,
        issued_at=issued_at,
        expiration_time=expiration_time,
        not_before=not_before,
        request_id=request_id,
        resources=resources,
    )


def recover_signer(text: str, signature: str) -> str:
    """The checksummed address that signed `text` with EIP-191 personal_sign.

    Only the canonical form is accepted: `0x` and 130 hex digits (r, s, v: 65 bytes), s in the
    lower half of the curve order (EIP-2) and v 27 or 28, so that a signature has one spelling.
    """
    if not signature.startswith("0x"):
        raise SiweError("the signature must be hexadecimal starting with 0x")
    digits = signature[2:]
    if len(digits) != _SIGNATURE_HEX_DIGITS:
        raise SiweError(
            f"the signature must be 65 bytes ({_SIGNATURE_HEX_DIGITS} hex digits after 0x),"
            f" not {len(digits)} digits"
        )
    if not _SIGNATURE_PATTERN.fullmatch(digits):
        raise SiweError("the signature has a character that is not a hex digit")
    raw = bytes.fromhex(digits)
    r, s, v = int.from_bytes(raw[:32]), int.from_bytes(raw[32:64]), raw[64]
    if v not in (27, 28):
        raise SiweError(f"the signature's v must be 27 or 28, not {v}")
    if not 0 < r < _SECP256K1_ORDER:
        raise SiweError("the signature's r is outside the secp256k1 range")
    if s == 0:
        raise SiweError("the signature's s is zero")
    if s > _SECP256K1_ORDER // 2:
        raise SiweError("the signature's s is in the upper half of the curve order; sign with low s (EIP-2)")
    try:
        signer: str = Account.recover_message(encode_defunct(text=text), signature=raw)
    except BadSignature:
        raise SiweError("the signature does not recover to any public key") from None
    return signer


@dataclass(frozen=True, kw_only=True)
class Challenge:
    """The EIP-4361 fields the orchestrator issues to a connecting miner (all but the address)."""

    domain: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime
    statement: str = STATEMENT
    version: str = "1"

    def message_for(self, address: str) -> str:
        """The EIP-4361 text `address` signs to answer this challenge.

        SiweError if the address or a field of the challenge is not valid EIP-4361; the times
        are written with `format_time`, so a miner that rebuilds the challenge from the
        strings it was sent (`parse_time`) writes them back unchanged.
        """
        message = SiweMessage(
            domain=self.domain,
            address=address,
            statement=self.statement,
            uri=self.uri,
            version=self.version,
            chain_id=self.chain_id,
            nonce=self.nonce,
            issued_at=format_time(self.issued_at),
            expiration_time=format_time(self.expiration_time),
        )
        return to_text(message)


def verify(text: str, signature: str, *, expected: Challenge, now: datetime) -> str:
    """The checksummed address that answered `expected` with `text` and `signature`, or SiweError.

    Every field must be exactly what was issued; a Not Before, if the miner added one, must
    not be after `now`; `now` must be before the expiration time (to the millisecond, as
    written in the message); and the signer must be the message's address.
    """
    message = parse(text)
    expires_at = format_time(expected.expiration_time)
    for label, got, wanted in (
        ("scheme", message.scheme, None),
        ("domain", message.domain, expected.domain),
        ("statement", message.statement, expected.statement),
        ("URI", message.uri, expected.uri),
        ("version", message.version, expected.version),
        ("chain id", message.chain_id, expected.chain_id),
        ("nonce", message.nonce, expected.nonce),
        ("issued at", message.issued_at, format_time(expected.issued_at)),
        ("expiration time", message.expiration_time, expires_at),
        ("request id", message.request_id, None),
        ("list of resources", message.resources, None),
    ):
        if got != wanted:
            raise SiweError(
                f"the message's {label} is {_describe(got)}, but the challenge issued {_describe(wanted)}"
            )
    if message.not_before is not None and parse_time(message.not_before) > now:
        raise SiweError(f"the message is not valid before {message.not_before}; it is now {format_time(now)}")
    if now >= parse_time(expires_at):
        raise SiweError(f"the challenge expired at {expires_at}; it is now {format_time(now)}")
    signer = recover_signer(text, signature)
    if signer != message.address:
        raise SiweError(f"the message is for {message.address}, but {signer} signed it")
    return signer


class _Lines:
    """A cursor over the message's lines that names the line it refuses."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self._index = 0

    def peek(self, ahead: int = 0) -> str | None:
        index = self._index + ahead
        return self._lines[index] if index < len(self._lines) else None

    def take(self, what: str) -> str:
        line = self.peek()
        if line is None:
            raise SiweError(f"the message ends where {what} should be (line {self._index + 1})")
        self._index += 1
        return line

    def take_empty(self) -> None:
        line = self.take("an empty line")
        if line != "":
            raise SiweError(f"line {self._index} must be empty; it is {_quote(line)}")

    def take_field(self, label: str) -> str:
        line = self.take(f"the {label!r} line")
        prefix = f"{label}: "
        if not line.startswith(prefix):
            raise SiweError(f"line {self._index} must start with {prefix!r}; it is {_quote(line)}")
        return line.removeprefix(prefix)

    def take_optional_field(self, label: str) -> str | None:
        line = self.peek()
        if line is None or not line.startswith(f"{label}: "):
            return None
        return self.take_field(label)

    def take_resources(self) -> list[str]:
        resources = []
        while (line := self.peek()) is not None and line.startswith(_RESOURCE_PREFIX):
            resources.append(self.take("a resource").removeprefix(_RESOURCE_PREFIX))
        return resources

    def expect_end(self) -> None:
        line = self.peek()
        if line is not None:
            raise SiweError(
                f"line {self._index + 1} is out of place or unknown: {_quote(line)}"
                " (after Issued At come only Expiration Time, Not Before, Request ID and Resources,"
                " in that order)"
            )


def _check_domain(domain: str) -> None:
    match = _AUTHORITY_PATTERN.fullmatch(domain)
    if match is None or match["reg_name"] == "" or not _is_ip_literal(match["ip_literal"]):
        raise SiweError(f"the domain {_quote(domain)} is not an RFC 3986 authority such as example.com:443")


def _check_uri(what: str, uri: str) -> None:
    match = _URI_PATTERN.fullmatch(uri)
    if match is None or not _is_ip_literal(match["ip_literal"]):
        raise SiweError(f"{what} {_quote(uri)} is not an RFC 3986 URI")


def _is_ip_literal(inside_brackets: str | None) -> bool:
    """Whether a host's bracketed part is an IPv6 address or an IPvFuture (None: no brackets)."""
    if inside_brackets is None or _IP_FUTURE_PATTERN.fullmatch(inside_brackets):
        return True
    if "%" in inside_brackets:  # a zone id, which RFC 3986 does not allow
        return False
    try:
        ipaddress.IPv6Address(inside_brackets)
    except ValueError:
        return False
    return True


def _check_address(address: str) -> None:
    if not _ADDRESS_PATTERN.fullmatch(address):
        raise SiweError(f"the address {_quote(address)} is not 0x followed by 40 hex digits")
    if to_checksum_address(address) != address:
        raise SiweError(
            f"the address {_quote(address)} is not EIP-55 checksummed;"
            f" write it as {to_checksum_address(address)}"
        )


def _quote(value: str) -> str:
    """`value` quoted for an error message, cut short so that a message stays readable."""
    if len(value) > _QUOTED_LENGTH:
        return repr(value[:_QUOTED_LENGTH]) + "…"
    return repr(value)


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return _quote(value)
    return repr(value)
