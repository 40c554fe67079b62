"""How a worker signs a request for its own statement; both the miner and the orchestrator use it.

    X-Krewe-Address:   the worker's address, EIP-55 checksummed
    X-Krewe-Timestamp: the time of signing, whole seconds since the Unix epoch, in decimal
    X-Krewe-Signature: EIP-191 personal_sign of "krewe statement <address> <timestamp>"

The orchestrator accepts it within `SIGNATURE_WINDOW_S` of its own clock, either way, for that
worker's statement only (docs/protocol.md, "Statements").
"""

from krewe.keys import SigningKey

__all__ = [
    "ADDRESS_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_WINDOW_S",
    "TIMESTAMP_HEADER",
    "signed_headers",
    "statement_message",
]

ADDRESS_HEADER = "X-Krewe-Address"
TIMESTAMP_HEADER = "X-Krewe-Timestamp"
SIGNATURE_HEADER = "X-Krewe-Signature"
SIGNATURE_WINDOW_S = 60


def statement_message(address: str, timestamp: str) -> str:
    """The text a worker signs to read its statement."""
    return f"krewe statement {address} {timestamp}"


def signed_headers(key: SigningKey, now: float) -> dict[str, str]:
    """The headers that let the holder of `key` read its own statement at time `now`."""
    timestamp = str(int(now))
    return {
        ADDRESS_HEADER: key.address,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: key.sign_message(statement_message(key.address, timestamp)),
    }
