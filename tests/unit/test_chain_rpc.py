"""The settlement client's JSON-RPC calls against a node on 127.0.0.1 that answers from a script:
each answer is read as the node meant it, and an answer the client cannot use is a ChainError that
says what came, never a wrong number."""

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from krewe.keys import SigningKey
from krewe.orchestrator.chain import (
    BATCH_NONCE_CALLDATA,
    REWARDS_DISTRIBUTED_TOPIC,
    BatchRefusedError,
    ChainClient,
    ChainError,
    RpcError,
)

DISTRIBUTOR = "0x" + "cd" * 20
KEY = SigningKey.from_hex("0x" + "11" * 32)
# what a node answers the calls that prepare a batch: the gas, the account's count, a 1 gwei tip, a
# head block with a base fee of 7 wei
PREPARE_ANSWERS = {
    "eth_estimateGas": "0x5208",
    "eth_getTransactionCount": "0x2",
    "eth_maxPriorityFeePerGas": "0x3b9aca00",
    "eth_getBlockByNumber": {"baseFeePerGas": "0x7"},
}
WORKERS = ("0x" + "01" * 20, "0x" + "02" * 20)


@dataclass
class ScriptedNode:
    """Answers each method with what `answers` holds for it: a result, or {"error": ...}."""

    answers: dict[str, Any]
    calls: list[tuple[str, list[Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        call = orjson.loads(await request.read())
        self.calls.append((call["method"], call["params"]))
        answer = self.answers[call["method"]]
        if isinstance(answer, dict) and "error" in answer:
            reply = {"jsonrpc": "2.0", "id": call["id"], "error": answer["error"]}
        else:
            reply = {"jsonrpc": "2.0", "id": call["id"], "result": answer}
        return web.Response(body=orjson.dumps(reply), content_type="application/json")


@pytest.fixture
async def node() -> AsyncIterator[tuple[ScriptedNode, ChainClient]]:
    orchestrator = "0x" + KEY.address[2:].lower().rjust(64, "0")  # the distributor's orchestrator()
    fake = ScriptedNode({"eth_chainId": "0x7a69", "eth_call": orchestrator})
    app = web.Application()
    app.router.add_post("/", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = await ChainClient.connect(f"http://127.0.0.1:{runner.addresses[0][1]}/", DISTRIBUTOR, KEY)
    yield fake, client
    await client.close()
    await runner.cleanup()


async def test_reads_are_pinned_to_their_block_and_read_as_hex_quantities(
    node: tuple[ScriptedNode, ChainClient],
) -> None:
    fake, client = node
    assert client.chain_id == 31337
    fake.answers |= {
        "eth_blockNumber": "0x1f",
        "eth_call": "0x" + "0" * 63 + "7",
        "eth_getTransactionCount": "0x3",
    }
    assert await client.block_number() == 31
    assert await client.batch_nonce(30) == 7
    assert await client.mined_account_nonce(30) == 3
    assert fake.calls[-2] == (
        "eth_call",
        [{"to": client.distributor.address, "data": BATCH_NONCE_CALLDATA}, "0x1e"],
    )
    assert fake.calls[-1] == ("eth_getTransactionCount", [KEY.address, "0x1e"])


async def test_the_landed_payload_is_the_first_word_of_the_log_searched_by_nonce_topic(
    node: tuple[ScriptedNode, ChainClient],
) -> None:
    fake, client = node
    payload = "ab" * 32
    fake.answers["eth_getLogs"] = [{"data": "0x" + payload + "0" * 128, "topics": []}]
    assert await client.landed_payload(5, since=10, until=12) == "0x" + payload
    (search,) = fake.calls[-1][1]
    assert search["topics"] == [REWARDS_DISTRIBUTED_TOPIC, "0x" + "0" * 63 + "5"]
    assert (search["fromBlock"], search["toBlock"]) == ("0xa", "0xc")
    fake.answers["eth_getLogs"] = []
    assert await client.landed_payload(5, since=10, until=12) is None


@pytest.mark.parametrize(
    ("method", "answer", "said"),
    [
        ("eth_blockNumber", "31", "'31'"),  # decimal, not a quantity
        ("eth_blockNumber", None, "None"),
        ("eth_blockNumber", "0xzz", "'0xzz'"),
        ("eth_getLogs", [{"data": "0x12"}], "without its payload hash"),
        ("eth_getLogs", ["0x12"], "without its payload hash"),
        ("eth_getLogs", {"data": "0x12"}, "not a list of logs"),
    ],
)
async def test_an_answer_that_is_not_what_the_method_returns_is_a_chain_error(
    node: tuple[ScriptedNode, ChainClient], method: str, answer: Any, said: str
) -> None:
    fake, client = node
    fake.answers[method] = answer
    with pytest.raises(ChainError, match=re.escape(said)):
        if method == "eth_getLogs":
            await client.landed_payload(1, since=0, until=0)
        else:
            await client.block_number()


async def test_a_revert_refuses_the_batch_and_another_error_is_raised_as_it_came(
    node: tuple[ScriptedNode, ChainClient],
) -> None:
    fake, client = node
    pool_exhausted = "0x" + "00" * 4  # an unknown selector is named by its data
    fake.answers["eth_estimateGas"] = {
        "error": {"code": 3, "message": "execution reverted", "data": pool_exhausted}
    }
    with pytest.raises(BatchRefusedError, match=pool_exhausted):
        await client.prepare(0, WORKERS, (1, 2))
    fake.answers["eth_estimateGas"] = {"error": {"code": -32000, "message": "header not found"}}
    with pytest.raises(RpcError, match="header not found"):
        await client.prepare(0, WORKERS, (1, 2))


async def test_a_head_block_without_a_base_fee_is_a_chain_error(
    node: tuple[ScriptedNode, ChainClient],
) -> None:
    fake, client = node
    fake.answers |= PREPARE_ANSWERS | {"eth_getBlockByNumber": {"number": "0x1"}}  # before EIP-1559
    with pytest.raises(ChainError, match="got None"):
        await client.prepare(0, WORKERS, (1, 2))


async def test_a_broadcast_the_node_does_not_accept_is_not_an_error_and_receipts_are_looked_up(
    node: tuple[ScriptedNode, ChainClient],
) -> None:
    fake, client = node
    fake.answers |= PREPARE_ANSWERS | {
        "eth_sendRawTransaction": {"error": {"code": -32000, "message": "nonce too low"}},
        "eth_getTransactionReceipt": None,
    }
    prepared = await client.prepare(0, WORKERS, (1, 2), open_account_nonces=[4])
    assert prepared.account_nonce == 5  # past the open send at 4, though the chain's count is 2
    assert prepared.send.max_priority_fee_per_gas == 10**9
    assert prepared.send.max_fee_per_gas == 2 * 7 + 10**9
    await client.broadcast(prepared.send)
    assert fake.calls[-1] == ("eth_sendRawTransaction", [prepared.send.raw])
    assert not await client.mined([prepared.send.tx_hash])
    fake.answers["eth_getTransactionReceipt"] = {"status": "0x1"}
    assert await client.mined(["0x" + "00" * 32, prepared.send.tx_hash])
