"""`krewe miner register | status | claim | exit` against anvil, signed with the miner's own key."""

from typing import Any

from click.testing import CliRunner
from eth_account import Account

from krewe.cli import main
from krewe.contracts import load_artifact
from krewe.devchain import KREW, dev_key, transact
from tests.service.conftest import Chain

NEW_MINER_KEY = 17  # an anvil account with ether and no stake


def run(chain: Chain, *args: str) -> Any:
    env = {
        "KREWE_MINER_DEV_KEY": dev_key(NEW_MINER_KEY),
        "KREWE_MINER_RPC_URL": chain.anvil.url,
        "KREWE_MINER_REGISTRY_ADDRESS": chain.deployment.registry,
        "KREWE_MINER_DISTRIBUTOR_ADDRESS": chain.deployment.distributor,
    }
    return CliRunner().invoke(main, ["miner", *args], env=env, catch_exceptions=False)


def test_register_status_claim_and_exit(chain: Chain) -> None:
    w3 = chain.anvil.web3()
    address = Account.from_key(dev_key(NEW_MINER_KEY)).address
    token, registry, distributor = chain.deployment.contracts(w3)
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    try:
        result = run(chain, "register", "--stake", "150")
        assert result.exit_code == 2
        assert "holds 0 KREW, less than the 150 KREW to stake" in result.output
        transact(w3, token.functions.mint(address, 200 * KREW), chain.deployment.admin)
        result = run(chain, "register", "--stake", "150.5")
        assert result.exit_code == 0, result.output
        assert "stake       150.5 KREW" in result.output and "active      yes" in result.output
        assert registry.functions.isActive(address).call()
        transact(
            w3,
            distributor.functions.batchDistributeRewards(
                distributor.functions.batchNonce().call(), [address], [3 * KREW]
            ),
            chain.deployment.orchestrator,
        )
        assert "claimable   3 KREW" in run(chain, "status").output
        result = run(chain, "claim")
        assert result.exit_code == 0 and "claimed in 0x" in result.output
        assert "claimable   0 KREW" in run(chain, "status").output
        result = run(chain, "claim")
        assert (result.exit_code, result.output.strip()) == (2, "krewe: claim would revert: NothingToClaim")
        result = run(chain, "exit")
        assert result.exit_code == 0 and "exit requested" in result.output
        assert "active      no (exiting)" in run(chain, "status").output
        result = run(chain, "exit", "--withdraw")
        assert (result.exit_code, result.output.strip()) == (
            2,
            "krewe: withdraw would revert: StillUnbonding",
        )
        result = run(chain, "register", "--stake", "-1")
        assert "is not a positive amount of KREW" in result.output
    finally:
        w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]


def test_deploy_prints_settings_for_a_fresh_deployment(chain: Chain) -> None:
    orchestrator = Account.from_key(dev_key(18)).address
    env = {"KREWE_DEPLOY_DEV_KEY": dev_key(19)}
    result = CliRunner().invoke(
        main,
        ["deploy", "--rpc-url", chain.anvil.url, "--orchestrator", orchestrator, "--pool", "50"],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    settings = dict(line.split(" = ") for line in result.output.splitlines() if " = " in line)
    w3 = chain.anvil.web3()
    distributor = w3.eth.contract(
        address=settings["distributor_address"].strip('"'), abi=load_artifact("RewardDistributor").abi
    )
    assert distributor.functions.orchestrator().call() == orchestrator
    assert distributor.functions.unallocated().call() == 50 * KREW
    assert 0 < int(settings["chain_from_block"]) <= w3.eth.block_number
    result = CliRunner().invoke(
        main, ["deploy", "--rpc-url", chain.anvil.url, "--orchestrator", orchestrator]
    )
    assert (result.exit_code, result.output.strip()) == (
        2,
        "krewe: no admin key: set a keystore file (or a development key variable)",
    )
