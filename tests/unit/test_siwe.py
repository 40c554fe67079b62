"""Sign-In with Ethereum: the upstream vectors, equality with the `siwe` package, every refusal."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import siwe as siwe_package
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from hypothesis import given, settings
from hypothesis import strategies as st

from krewe.protocol.siwe import (
    MAX_MESSAGE_BYTES,
    STATEMENT,
    Challenge,
    SiweError,
    SiweMessage,
    format_time,
    parse,
    parse_time,
    recover_signer,
    to_text,
    verify,
)

VECTORS = Path(__file__).parent.parent / "data" / "siwe"
PARSING_POSITIVE: dict[str, Any] = json.loads((VECTORS / "parsing_positive.json").read_text())
PARSING_NEGATIVE: dict[str, str] = json.loads((VECTORS / "parsing_negative.json").read_text())
VERIFICATION_POSITIVE: dict[str, Any] = json.loads((VECTORS / "verification_positive.json").read_text())
VERIFICATION_NEGATIVE: dict[str, Any] = json.loads((VECTORS / "verification_negative.json").read_text())
# Upstream negative vectors that are valid EIP-4361 (the `siwe` package accepts them too).
MISLABELLED_NEGATIVE = {
    "version not 1": "its Version line reads 1",
    "domain not RFC4501 authority": "an underscore is an unreserved character of an RFC 3986 host",
}

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
MINER: LocalAccount = Account.from_key("0x" + "11" * 32)
OTHER: LocalAccount = Account.from_key("0x" + "22" * 32)
ISSUED_AT = datetime(2026, 11, 27, 13, 30, 0, 123000, tzinfo=UTC)
EXPIRES_AT = ISSUED_AT + timedelta(minutes=5)
CHALLENGE = Challenge(
    domain="orchestrator.example:8443",
    uri="wss://orchestrator.example:8443/v1/workers/connect",
    chain_id=31337,
    nonce="q7Zk2VbN8xLp4RtY9wHc",
    issued_at=ISSUED_AT,
    expiration_time=EXPIRES_AT,
)
NOW = ISSUED_AT + timedelta(seconds=2)


def sign(account: LocalAccount, text: str) -> str:
    signature: bytes = account.sign_message(encode_defunct(text=text)).signature
    return "0x" + signature.hex()


def vector_message(fields: dict[str, Any]) -> SiweMessage:
    """A vector's camelCase fields as a SiweMessage."""
    resources = fields.get("resources")
    return SiweMessage(
        domain=fields["domain"],
        address=fields["address"],
        statement=fields.get("statement"),
        uri=fields["uri"],
        version=fields["version"],
        chain_id=int(fields["chainId"]),
        nonce=fields["nonce"],
        issued_at=fields["issuedAt"],
        expiration_time=fields.get("expirationTime"),
        not_before=fields.get("notBefore"),
        request_id=fields.get("requestId"),
        resources=None if resources is None else tuple(resources),
    )


def package_text(message: SiweMessage) -> str:
    """What the `siwe` package writes for the same fields."""
    fields = {
        "domain": message.domain,
        "address": message.address,
        "statement": message.statement,
        "uri": message.uri,
        "version": message.version,
        "chain_id": message.chain_id,
        "nonce": message.nonce,
        "issued_at": message.issued_at,
        "expiration_time": message.expiration_time,
        "not_before": message.not_before,
        "request_id": message.request_id,
        "resources": None if message.resources is None else list(message.resources),
        "scheme": message.scheme,
    }
    text: str = siwe_package.SiweMessage(**fields).prepare_message()
    return text


# Upstream vectors


def test_all_vectors_are_present() -> None:
    assert len(PARSING_POSITIVE) == 8
    assert len(PARSING_NEGATIVE) == 34
    assert len(VERIFICATION_POSITIVE) == 4
    assert len(VERIFICATION_NEGATIVE) == 7


@pytest.mark.parametrize("name", sorted(PARSING_POSITIVE))
def test_positive_vector_parses_to_its_fields_and_back_to_its_text(name: str) -> None:
    vector = PARSING_POSITIVE[name]
    expected = vector_message(vector["fields"])
    message = parse(vector["message"])
    assert message == expected
    assert to_text(message) == vector["message"]
    assert package_text(message) == vector["message"]


@pytest.mark.parametrize("name", sorted(set(PARSING_NEGATIVE) - set(MISLABELLED_NEGATIVE)))
def test_negative_vector_is_refused(name: str) -> None:
    with pytest.raises(SiweError):
        parse(PARSING_NEGATIVE[name])


@pytest.mark.parametrize("name", sorted(MISLABELLED_NEGATIVE))
def test_mislabelled_negative_vector_is_valid_here_and_in_the_package(name: str) -> None:
    text = PARSING_NEGATIVE[name]
    assert to_text(parse(text)) == text
    assert siwe_package.SiweMessage.from_message(message=text).prepare_message() == text


@pytest.mark.parametrize(
    "name", sorted(set(VERIFICATION_POSITIVE) - {"recovery byte starting at 0 tally_example"})
)
def test_signature_from_another_implementation_recovers_its_address(name: str) -> None:
    vector = VERIFICATION_POSITIVE[name]
    message = vector_message(vector)
    assert recover_signer(to_text(message), vector["signature"]) == vector["address"]


def test_recovery_byte_zero_or_one_is_refused_though_other_libraries_accept_it() -> None:
    vector = VERIFICATION_POSITIVE["recovery byte starting at 0 tally_example"]
    text = to_text(vector_message(vector))
    assert (
        Account.recover_message(encode_defunct(text=text), signature=vector["signature"]) == vector["address"]
    )
    with pytest.raises(SiweError, match="v must be 27 or 28, not 1"):
        recover_signer(text, vector["signature"])


def vector_challenge(vector: dict[str, Any]) -> Challenge:
    return Challenge(
        domain=vector.get("domainBinding", vector["domain"]),
        uri=vector["uri"],
        chain_id=vector["chainId"],
        nonce=vector.get("matchNonce", vector["nonce"]),
        issued_at=parse_time(vector["issuedAt"]),
        expiration_time=parse_time(vector["expirationTime"]),
        statement=vector["statement"],
    )


def test_example_message_signed_elsewhere_verifies_end_to_end() -> None:
    vector = VERIFICATION_POSITIVE["example message"]
    text = vector_challenge(vector).message_for(vector["address"])
    assert text == to_text(vector_message(vector))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert verify(text, vector["signature"], expected=vector_challenge(vector), now=now) == vector["address"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("domain binding", "domain is 'login.xyz', but the challenge issued 'example.com'"),
        ("custom nonce", "nonce is 'bTyXgcQxn2htgkjJn', but the challenge issued '6548asdgf'"),
        ("custom time", "expired at 2100-01-07T14:31:43.952Z"),
        ("wrong signature", "the message is for 0x6Da01670d8fc844e736095918bbE11fE8D564163, but 0x"),
        ("malformed signature", "65 bytes"),
    ],
)
def test_negative_verification_vector_is_refused_for_its_reason(name: str, reason: str) -> None:
    vector = VERIFICATION_NEGATIVE[name]
    text = to_text(vector_message(vector))
    now = parse_time(vector.get("time", "2026-01-01T00:00:00Z"))
    with pytest.raises(SiweError) as refusal:
        verify(text, vector["signature"], expected=vector_challenge(vector), now=now)
    assert reason in str(refusal.value)


@pytest.mark.parametrize("name", ["expired message", "not yet valid"])
def test_time_bound_negative_vector_has_a_valid_signature(name: str) -> None:
    # These two carry times without milliseconds or no expiration, which no Challenge issues;
    # their time checks are covered below with messages signed here.
    vector = VERIFICATION_NEGATIVE[name]
    assert recover_signer(to_text(vector_message(vector)), vector["signature"]) == vector["address"]


# A Challenge's text is the `siwe` package's text, and verifies


def test_message_for_is_byte_identical_to_the_package_and_verifies() -> None:
    package_message = siwe_package.SiweMessage(
        domain=CHALLENGE.domain,
        address=MINER.address,
        statement=STATEMENT,
        uri=CHALLENGE.uri,
        version="1",
        chain_id=CHALLENGE.chain_id,
        nonce=CHALLENGE.nonce,
        issued_at=siwe_package.siwe.ISO8601Datetime.from_datetime(ISSUED_AT),
        expiration_time=siwe_package.siwe.ISO8601Datetime.from_datetime(EXPIRES_AT),
    )
    text = package_message.prepare_message()
    assert text == CHALLENGE.message_for(MINER.address)
    assert text == (
        "orchestrator.example:8443 wants you to sign in with your Ethereum account:\n"
        f"{MINER.address}\n"
        "\n"
        "Log in to serve inference jobs as a krewe worker.\n"
        "\n"
        "URI: wss://orchestrator.example:8443/v1/workers/connect\n"
        "Version: 1\n"
        "Chain ID: 31337\n"
        "Nonce: q7Zk2VbN8xLp4RtY9wHc\n"
        "Issued At: 2026-11-27T13:30:00.123Z\n"
        "Expiration Time: 2026-11-27T13:35:00.123Z"
    )
    signature = sign(MINER, text)
    package_message.verify(signature, timestamp=NOW)
    assert verify(text, signature, expected=CHALLENGE, now=NOW) == MINER.address


@st.composite
def challenges(draw: st.DrawFn) -> Challenge:
    host = draw(st.from_regex(r"[a-z]([a-z0-9\-]{0,20}[a-z0-9])?(\.[a-z]{2,10}){0,3}", fullmatch=True))
    port = draw(st.integers(1, 65535))
    path = draw(st.from_regex(r"(/[A-Za-z0-9_.~\-]{0,12}){0,4}", fullmatch=True))
    offset = draw(st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))]))
    issued_at = draw(
        st.datetimes(
            min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(offset)
        )
    )
    lifetime = draw(st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=1)))
    return Challenge(
        domain=f"{host}:{port}",
        uri=f"wss://{host}:{port}{path}",
        # From 1: the package writes a chain id of 0 as 1.
        chain_id=draw(st.integers(1, 2**64)),
        nonce=draw(st.from_regex(r"[A-Za-z0-9]{8,40}", fullmatch=True)),
        issued_at=issued_at,
        expiration_time=issued_at + lifetime,
    )


@settings(max_examples=200, deadline=None, derandomize=True)
@given(challenge=challenges())
def test_any_challenge_matches_the_package(challenge: Challenge) -> None:
    text = challenge.message_for(MINER.address)
    message = parse(text)
    assert package_text(message) == text
    package_times = [
        siwe_package.siwe.ISO8601Datetime.from_datetime(moment)
        for moment in (challenge.issued_at, challenge.expiration_time)
    ]
    assert [message.issued_at, message.expiration_time] == package_times


# Any single field changed is refused, even when properly signed


def text_with(**changes: Any) -> str:
    message = parse(CHALLENGE.message_for(MINER.address))
    return to_text(replace(message, **changes))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (text_with(domain="evil.example:8443"), "domain is 'evil.example:8443'"),
        (text_with(uri="wss://evil.example/v1/workers/connect"), "URI is 'wss://evil.example"),
        (text_with(chain_id=1), "chain id is 1, but the challenge issued 31337"),
        (text_with(nonce="q7Zk2VbN8xLp4RtY9wHd"), "nonce is 'q7Zk2VbN8xLp4RtY9wHd'"),
        (text_with(issued_at="2026-11-27T13:30:00.124Z"), "issued at is '2026-11-27T13:30:00.124Z'"),
        (
            text_with(issued_at="2026-11-27T13:30:00.123+00:00"),
            "issued at is '2026-11-27T13:30:00.123+00:00'",
        ),
        (
            text_with(expiration_time="2026-11-27T13:35:00.124Z"),
            "expiration time is '2026-11-27T13:35:00.124Z'",
        ),
        (text_with(expiration_time=None), "expiration time is nothing"),
        (text_with(statement="Log in."), "statement is 'Log in.'"),
        (text_with(statement=None), "statement is nothing"),
        (text_with(scheme="https"), "scheme is 'https', but the challenge issued nothing"),
        (text_with(request_id="abc"), "request id is 'abc'"),
        (
            text_with(resources=("https://example.com/",)),
            "list of resources is ('https://example.com/',), but the challenge issued nothing",
        ),
        (
            CHALLENGE.message_for(MINER.address).replace("Version: 1", "Version: 2"),
            "Version must be 1, not '2'",
        ),
        (
            CHALLENGE.message_for(OTHER.address),
            f"the message is for {OTHER.address}, but {MINER.address} signed it",
        ),
    ],
)
def test_a_signed_message_with_one_field_changed_is_refused(text: str, reason: str) -> None:
    with pytest.raises(SiweError) as refusal:
        verify(text, sign(MINER, text), expected=CHALLENGE, now=NOW)
    assert reason in str(refusal.value)


def test_whoever_signs_the_message_for_their_own_address_is_who_logs_in() -> None:
    text = CHALLENGE.message_for(OTHER.address)
    assert verify(text, sign(OTHER, text), expected=CHALLENGE, now=NOW) == OTHER.address


def test_a_signature_by_another_key_is_refused() -> None:
    text = CHALLENGE.message_for(MINER.address)
    with pytest.raises(SiweError, match=f"but {OTHER.address} signed it"):
        verify(text, sign(OTHER, text), expected=CHALLENGE, now=NOW)


# Times: to the millisecond


def test_expiry_is_exact_to_the_millisecond() -> None:
    text = CHALLENGE.message_for(MINER.address)
    signature = sign(MINER, text)
    millisecond = timedelta(milliseconds=1)
    assert verify(text, signature, expected=CHALLENGE, now=EXPIRES_AT - millisecond) == MINER.address
    for late in (EXPIRES_AT, EXPIRES_AT + millisecond):
        with pytest.raises(SiweError, match=r"expired at 2026-11-27T13:35:00\.123Z; it is now"):
            verify(text, signature, expected=CHALLENGE, now=late)


def test_expiry_below_the_millisecond_is_what_the_text_says() -> None:
    challenge = replace(CHALLENGE, expiration_time=EXPIRES_AT + timedelta(microseconds=999))
    text = challenge.message_for(MINER.address)
    assert "Expiration Time: 2026-11-27T13:35:00.123Z" in text
    with pytest.raises(SiweError, match="expired"):
        verify(text, sign(MINER, text), expected=challenge, now=EXPIRES_AT)


def test_not_before_is_accepted_once_reached_and_refused_before() -> None:
    not_before = NOW - timedelta(seconds=1)
    text = text_with(not_before=format_time(not_before))
    signature = sign(MINER, text)
    assert verify(text, signature, expected=CHALLENGE, now=not_before) == MINER.address
    with pytest.raises(SiweError, match=r"not valid before 2026-11-27T13:30:01\.123Z"):
        verify(text, signature, expected=CHALLENGE, now=not_before - timedelta(milliseconds=1))


def test_verify_refuses_what_parse_refuses() -> None:
    text = CHALLENGE.message_for(MINER.address) + "\n"
    with pytest.raises(SiweError, match="out of place"):
        verify(text, sign(MINER, text), expected=CHALLENGE, now=NOW)


# Signature form


def signature_parts(signature: str) -> tuple[int, int, int]:
    raw = bytes.fromhex(signature[2:])
    return int.from_bytes(raw[:32]), int.from_bytes(raw[32:64]), raw[64]


def signature_of(r: int, s: int, v: int) -> str:
    return "0x" + (r.to_bytes(32) + s.to_bytes(32) + bytes([v])).hex()


TEXT = CHALLENGE.message_for(MINER.address)
SIGNATURE = sign(MINER, TEXT)


def test_canonical_signature_recovers_the_signer_in_either_case() -> None:
    assert recover_signer(TEXT, SIGNATURE) == MINER.address
    assert recover_signer(TEXT, "0x" + SIGNATURE[2:].upper()) == MINER.address


def test_high_s_twin_is_refused_though_it_recovers_the_same_key() -> None:
    r, s, v = signature_parts(SIGNATURE)
    high_s = signature_of(r, SECP256K1_ORDER - s, 55 - v)
    assert Account.recover_message(encode_defunct(text=TEXT), signature=high_s) == MINER.address
    with pytest.raises(SiweError, match=r"upper half of the curve order; sign with low s \(EIP-2\)"):
        recover_signer(TEXT, high_s)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (SIGNATURE[2:], "hexadecimal starting with 0x"),
        ("0X" + SIGNATURE[2:], "hexadecimal starting with 0x"),
        (SIGNATURE[:-2], "65 bytes (130 hex digits after 0x), not 128 digits"),
        (SIGNATURE + "00", "65 bytes (130 hex digits after 0x), not 132 digits"),
        (SIGNATURE[:-4], "not 126 digits"),
        ("0x", "not 0 digits"),
        (SIGNATURE[:-1] + "g", "not a hex digit"),
        (SIGNATURE[:10] + " " + SIGNATURE[11:], "not a hex digit"),
        (SIGNATURE[:-2] + "00", "v must be 27 or 28, not 0"),
        (SIGNATURE[:-2] + "01", "v must be 27 or 28, not 1"),
        (SIGNATURE[:-2] + "1d", "v must be 27 or 28, not 29"),
        (signature_of(0, 1, 27), "r is outside"),
        (signature_of(SECP256K1_ORDER, 1, 27), "r is outside"),
        (signature_of(1, 0, 27), "s is zero"),
        (signature_of(SECP256K1_ORDER // 2 + 1, SECP256K1_ORDER // 2 + 1, 27), "upper half"),
        (signature_of(5, 1, 27), "does not recover to any public key"),
    ],
)
def test_malformed_signature_is_refused_naming_the_problem(signature: str, reason: str) -> None:
    with pytest.raises(SiweError) as refusal:
        recover_signer(TEXT, signature)
    assert reason in str(refusal.value)


def test_s_exactly_half_the_order_is_low() -> None:
    # The boundary itself is admitted: no error about s, only whatever the key recovery says.
    signature = signature_of(signature_parts(SIGNATURE)[0], SECP256K1_ORDER // 2, 27)
    assert recover_signer(TEXT, signature).startswith("0x")


# Parsing beyond the vectors


def test_every_optional_field_round_trips() -> None:
    message = SiweMessage(
        scheme="https",
        domain="[2001:db8::1]:8443",
        address=MINER.address,
        statement="",
        uri="urn:krewe:login",
        chain_id=0,
        nonce="A1b2C3d4",
        issued_at="2026-11-27t13:30:00.123456789+05:30",
        expiration_time="2026-11-27T13:35:00Z",
        not_before="2026-11-27T13:30:60Z",
        request_id="",
        resources=(),
    )
    text = to_text(message)
    assert parse(text) == message
    assert "\n\n\n\nURI: urn:krewe:login" in text
    assert text.endswith("Request ID: \nResources:")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (TEXT + "\n", "line 12 is out of place or unknown: ''"),
        (TEXT.replace("\n", "\r\n"), "carriage return"),
        (TEXT + "\nExpiration Time: 2026-11-27T13:35:00.123Z", "line 12 is out of place"),
        (TEXT + "\nComment: hello", "line 12 is out of place or unknown: 'Comment: hello'"),
        (TEXT.replace("Chain ID: 31337", "Chain ID: 031337"), "without leading zeros, not '031337'"),
        (TEXT.replace("Chain ID: 31337", "Chain ID: -1"), "without leading zeros"),
        (TEXT.replace("Chain ID: ", "Chain Id: "), "line 8 must start with 'Chain ID: '"),
        (TEXT.replace("URI: ", "URI:"), "line 6 must start with 'URI: '"),
        (TEXT.replace("krewe worker.", "krewe worker ✓"), "non-ASCII character at offset"),
        (TEXT.replace("krewe worker.", 'krewe "worker"'), "character EIP-4361 does not allow"),
        (
            TEXT.replace("Nonce: q7Zk2VbN8xLp4RtY9wHc", "Nonce: q7Zk2VbN-xLp4"),
            "not at least 8 letters or digits",
        ),
        (TEXT.replace(MINER.address, MINER.address.lower()), "not EIP-55 checksummed; write it as"),
        (TEXT.replace(MINER.address, MINER.address[:-1]), "not 0x followed by 40 hex digits"),
        (
            TEXT.replace("orchestrator.example:8443 wants", "[fe80::1%25eth0]:8443 wants"),
            "not an RFC 3986 authority",
        ),
        (
            TEXT.replace("orchestrator.example:8443 wants", "[not-ipv6]:8443 wants"),
            "not an RFC 3986 authority",
        ),
        (
            TEXT.replace("orchestrator.example:8443 wants", "example.com/path wants"),
            "not an RFC 3986 authority",
        ),
        (
            TEXT.replace("orchestrator.example:8443 wants", "1https://example.com wants"),
            "not an RFC 3986 scheme",
        ),
        (TEXT.replace("wants you", "asks you"), "line 1 must end with"),
        (TEXT.replace("URI: wss://", "URI: wss://exa mple/"), "not an RFC 3986 URI"),
        (TEXT.replace("URI: wss://", "URI: wss://[::1%eth0]/"), "not an RFC 3986 URI"),
        (TEXT.replace("13:30:00.123Z", "13:30:00.123"), "not an RFC 3339 date-time"),
        (TEXT.split("\nIssued At")[0], "the message ends where the 'Issued At' line should be (line 10)"),
        ("", "line 1 must end with"),
        (TEXT.replace("krewe worker.", "x" * MAX_MESSAGE_BYTES), f"over the limit of {MAX_MESSAGE_BYTES}"),
    ],
)
def test_malformed_message_is_refused_naming_the_problem(text: str, reason: str) -> None:
    with pytest.raises(SiweError) as refusal:
        parse(text)
    assert reason in str(refusal.value)


def test_message_at_the_size_limit_is_accepted() -> None:
    padding = MAX_MESSAGE_BYTES - len(TEXT)
    text = TEXT.replace("krewe worker.", "krewe worker." + "x" * padding)
    assert len(text) == MAX_MESSAGE_BYTES
    assert parse(text).statement == STATEMENT + "x" * padding


def test_constructing_a_message_checks_its_fields() -> None:
    with pytest.raises(SiweError, match="Chain ID must be a non-negative integer"):
        SiweMessage(
            domain="a.example",
            address=MINER.address,
            uri="https://a.example",
            chain_id=-1,
            nonce="12345678",
            issued_at="2026-11-27T13:30:00Z",
        )
    with pytest.raises(SiweError, match="line break"):
        replace(parse(TEXT), statement="two\nlines")
    with pytest.raises(SiweError, match="Version must be 1"):
        replace(parse(TEXT), version="2")


# RFC 3339 times


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-11-27T13:30:00Z", datetime(2026, 11, 27, 13, 30, tzinfo=UTC)),
        ("2026-11-27T13:30:00.123Z", datetime(2026, 11, 27, 13, 30, 0, 123000, tzinfo=UTC)),
        ("2026-11-27t13:30:00.1z", datetime(2026, 11, 27, 13, 30, 0, 100000, tzinfo=UTC)),
        ("2026-11-27T13:30:00.123456789Z", datetime(2026, 11, 27, 13, 30, 0, 123456, tzinfo=UTC)),
        ("2026-11-27T15:00:00+01:30", datetime(2026, 11, 27, 13, 30, tzinfo=UTC)),
        ("2026-11-27T13:30:00-00:00", datetime(2026, 11, 27, 13, 30, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),
        ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
    ],
)
def test_parse_time_reads_rfc_3339_into_utc(text: str, moment: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == moment
    assert parsed.tzinfo == UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27 13:30:00Z",
        "2026-11-27T13:30:00",
        "2026-11-27T13:30Z",
        "2026-11-27T13:30:00.Z",
        "2026-11-27T24:00:00Z",
        "2026-11-27T13:60:00Z",
        "2026-11-27T13:30:61Z",
        "2026-13-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "2026-11-27T13:30:00+24:00",
        "2026-11-27T13:30:00+0100",
        "0000-01-01T00:00:00Z",
        "２０２６-11-27T13:30:00Z",
        " 2026-11-27T13:30:00Z",
    ],
)
def test_parse_time_refuses_what_rfc_3339_does_not_allow(text: str) -> None:
    with pytest.raises(SiweError, match="RFC 3339"):
        parse_time(text)


def test_format_time_writes_utc_milliseconds_truncated() -> None:
    moment = datetime(2026, 11, 27, 15, 0, 0, 123999, tzinfo=timezone(timedelta(hours=1, minutes=30)))
    assert format_time(moment) == "2026-11-27T13:30:00.123Z"
    assert format_time(datetime(2026, 11, 27, 13, 30, tzinfo=UTC)) == "2026-11-27T13:30:00.000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2026, 11, 27, 13, 30))
