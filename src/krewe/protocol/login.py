"""The login challenge of PROTOCOL.md §1.1: an EIP-4361 (Sign-In with Ethereum) style message.

The orchestrator cannot know a miner's address before the miner answers, so the message carries
every EIP-4361 field but the address line; the signer is recovered from the EIP-191
`personal_sign` signature and compared with the address the miner claims.
"""

from datetime import UTC, datetime

from eth_account import Account
from eth_account.messages import encode_defunct

__all__ = ["challenge_text", "recover_signer", "rfc3339"]

STATEMENT = "Log in to serve inference jobs as a krewe worker."


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def challenge_text(
    *, domain: str, uri: str, chain_id: int, nonce: str, issued_at: datetime, expires_at: datetime
) -> str:
    return (
        f"{domain} wants you to sign in with your Ethereum account.\n"
        f"\n{STATEMENT}\n\n"
        f"URI: {uri}\n"
        "Version: 1\n"
        f"Chain ID: {chain_id}\n"
        f"Nonce: {nonce}\n"
        f"Issued At: {rfc3339(issued_at)}\n"
        f"Expiration Time: {rfc3339(expires_at)}"
    )


def recover_signer(message: str, signature: str) -> str:
    """The checksummed address that signed `message` with EIP-191 personal_sign; ValueError if none."""
    try:
        address: str = Account.recover_message(encode_defunct(text=message), signature=signature)
    except Exception as error:  # eth_account raises several types for malformed signatures
        raise ValueError(f"malformed signature: {error}") from None
    return address
