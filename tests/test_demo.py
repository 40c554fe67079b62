"""`krewe demo --once` end to end: chat answers are agreed and streamed; what it prints matches what
is on chain."""

import json
import re
import socket
import subprocess
import sys

from krewe.contracts import load_artifact
from krewe.devchain import Anvil, free_port


def test_demo_once_prints_what_the_chain_holds() -> None:
    with Anvil.start(accounts=10) as anvil:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "krewe",
                "demo",
                "--once",
                "--port",
                str(free_port()),
                "--chain-url",
                anvil.url,
                "--requests",
                "6",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        output = done.stdout
        assert re.fullmatch(
            r"demo: OK, 6 embedding and 3 chat jobs, settlement paid at batch nonce \d+",
            output.strip().splitlines()[-1],
        )
        chats = re.findall(r"^(chat|stream (\d+) chunks) (\w+) (.+)$", output, re.M)
        assert len(chats) == 3 and chats[-1][0].startswith("stream")
        for how, _chunks, verdict, answer in chats:
            assert verdict == "agreed" and json.loads(answer).strip(), how
        assert int(chats[-1][1]) >= 2
        distributor_address = re.search(r"distributor (0x[0-9a-fA-F]{40})", output)
        assert distributor_address is not None
        w3 = anvil.web3()
        distributor = w3.eth.contract(
            address=distributor_address.group(1), abi=load_artifact("RewardDistributor").abi
        )
        credited = {
            address: int(wei) for address, wei in re.findall(r"^credited (0x\w{40}) (\d+)$", output, re.M)
        }
        assert len(credited) == 6
        for address, wei in credited.items():
            assert distributor.functions.credited(address).call() == wei
        honest = list(credited.values())[:5]
        liar = list(credited.values())[5]
        assert liar == 0 and sum(honest) > 0  # consensus kept the liar out
        claims = re.findall(r"^claimed (0x\w{40}) (\d+)$", output, re.M)
        assert len(claims) == 1
        address, wei = claims[0]
        assert distributor.functions.claimed(address).call() == int(wei) == credited[address]


def test_demo_fails_with_the_reason_on_its_last_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "krewe", "demo", "--once", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    assert (
        done.stdout.strip().splitlines()[-1]
        == f"demo failed: port {port} is in use: pass --port with a free one"
    )
