"""A miner's own transactions: stake to register, read its status, claim rewards, exit, withdraw.

Each transaction is signed with the miner's key and waited for (bounded); a revert is reported
with the contract's error name.
"""

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from web3 import Web3
from web3.contract import Contract

from krewe.contracts import load_artifact
from krewe.deploy import KREW
from krewe.keys import SigningKey
from krewe.transactions import send_signed

__all__ = ["MinerChain", "MinerChainError", "MinerStatus", "parse_krew"]


class MinerChainError(Exception):
    """A chain action that failed; the message says which and why."""


def parse_krew(amount: str) -> int:
    """'12.5' KREW -> wei, exactly."""
    try:
        value = Decimal(amount) * KREW
    except InvalidOperation:
        raise MinerChainError(f"{amount!r} is not an amount of KREW") from None
    if value <= 0 or value != value.to_integral_value():
        raise MinerChainError(f"{amount!r} is not a positive amount of KREW with at most 18 decimals")
    return int(value)


def format_krew(wei: int) -> str:
    return f"{Decimal(wei) / KREW:f} KREW"


@dataclass(frozen=True)
class MinerStatus:
    address: str
    stake: int
    active: bool
    exit_requested_at: int
    credited: int
    claimed: int

    @property
    def claimable(self) -> int:
        return self.credited - self.claimed

    def lines(self) -> list[str]:
        return [
            f"worker      {self.address}",
            f"stake       {format_krew(self.stake)}",
            f"active      {'yes' if self.active else 'no'}"
            + (" (exiting)" if self.exit_requested_at else ""),
            f"credited    {format_krew(self.credited)}",
            f"claimed     {format_krew(self.claimed)}",
            f"claimable   {format_krew(self.claimable)}",
        ]


class MinerChain:
    def __init__(self, rpc_url: str, registry: str, distributor: str, key: SigningKey) -> None:
        if not registry or not distributor:
            raise MinerChainError("set registry_address and distributor_address (the deployed contracts)")
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.key = key
        self.registry = self.w3.eth.contract(
            address=Web3.to_checksum_address(registry), abi=load_artifact("WorkerRegistry").abi
        )
        self.distributor = self.w3.eth.contract(
            address=Web3.to_checksum_address(distributor), abi=load_artifact("RewardDistributor").abi
        )
        token = self.registry.functions.token().call()
        self.token: Contract = self.w3.eth.contract(address=token, abi=load_artifact("KrewToken").abi)

    def status(self) -> MinerStatus:
        address = self.key.address
        stake, exit_at = self.registry.functions.workerInfo(address).call()
        return MinerStatus(
            address,
            stake,
            self.registry.functions.isActive(address).call(),
            exit_at,
            self.distributor.functions.credited(address).call(),
            self.distributor.functions.claimed(address).call(),
        )

    def register(self, amount: int) -> list[str]:
        """Approve the registry for `amount` wei of KREW and stake it."""
        balance = self.token.functions.balanceOf(self.key.address).call()
        if balance < amount:
            raise MinerChainError(
                f"this key holds {format_krew(balance)}, less than the {format_krew(amount)} to stake"
            )
        return [
            self._send(self.token.functions.approve(self.registry.address, amount)),
            self._send(self.registry.functions.stake(amount)),
        ]

    def claim(self) -> str:
        return self._send(self.distributor.functions.claim())

    def request_exit(self) -> str:
        return self._send(self.registry.functions.requestExit())

    def withdraw(self) -> str:
        return self._send(self.registry.functions.withdraw())

    def _send(self, call: Any) -> str:
        receipt = send_signed(self.w3, call, self.key)
        return "0x" + bytes(receipt["transactionHash"]).hex()
