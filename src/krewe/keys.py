"""Signing keys of orchestrators and miners: loaded from an encrypted keystore, never shown.

A key's repr, str and every error it raises show at most the address. A raw hex key in an
environment variable is accepted for development chains only.
"""

import json
import os
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress

__all__ = ["KeyLoadError", "SigningKey"]


class KeyLoadError(ValueError):
    """A key that cannot be loaded; the message says why, never what the key is."""


class SigningKey:
    def __init__(self, account: LocalAccount) -> None:
        self._account = account
        self.address: ChecksumAddress = account.address

    @classmethod
    def from_keystore(cls, path: Path, password: str) -> "SigningKey":
        """Decrypt an Ethereum keystore (V3 JSON) file."""
        try:
            keystore = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise KeyLoadError(f"cannot read keystore {path}: {error}") from None
        try:
            return cls(Account.from_key(Account.decrypt(keystore, password)))
        except ValueError:
            raise KeyLoadError(f"cannot decrypt keystore {path}: wrong password or damaged file") from None

    @classmethod
    def from_hex(cls, private_key: str) -> "SigningKey":
        """A raw hex key: for development chains only."""
        try:
            return cls(Account.from_key(private_key))
        except (ValueError, TypeError):
            raise KeyLoadError("the private key is not a valid 32-byte hex key") from None

    @classmethod
    def from_settings(
        cls,
        *,
        role: str,
        keystore: Path | None,
        password_env: str | None = None,
        password_file: Path | None = None,
        dev_key_env: str | None = None,
    ) -> "SigningKey":
        """A keystore with its password from a file or an env var; or a raw key in an env var."""
        if keystore is not None:
            if password_file is not None:
                try:
                    password = Path(password_file).read_text().rstrip("\n")
                except OSError as error:
                    raise KeyLoadError(
                        f"cannot read the password file {password_file}: {error.strerror}"
                    ) from None
            elif password_env is not None and password_env in os.environ:
                password = os.environ[password_env]
            else:
                raise KeyLoadError(
                    "the keystore needs a password: set a password file or a password variable"
                )
            return cls.from_keystore(keystore, password)
        if dev_key_env is not None and os.environ.get(dev_key_env):
            return cls.from_hex(os.environ[dev_key_env])
        raise KeyLoadError(f"no {role} key: set a keystore file (or a development key variable)")

    def sign_transaction(self, transaction: dict[str, Any]) -> tuple[str, str]:
        """Sign a transaction; returns (hash, raw) as hex."""
        signed = self._account.sign_transaction(transaction)
        return "0x" + bytes(signed.hash).hex(), "0x" + bytes(signed.raw_transaction).hex()

    def sign_message(self, text: str) -> str:
        """EIP-191 personal_sign of `text`, as hex."""
        return "0x" + bytes(self._account.sign_message(encode_defunct(text=text)).signature).hex()

    def __repr__(self) -> str:
        return f"SigningKey({self.address})"

    __str__ = __repr__
