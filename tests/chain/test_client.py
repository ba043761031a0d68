"""The chain client against a real anvil: deployments, typed reverts, nonces under
concurrency, paged events, an unreachable node."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from allmende.chain import ChainClient, ContractReverted, Deployment, DeploymentNotFound, RpcUnavailable
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.chain.bindings import ROLE_PROVIDER
from allmende.chain.deploy import DEVNET_ALM_PER_ACCOUNT, DEVNET_USD_PER_ACCOUNT
from allmende.core import AmountOverflow, UnknownModel
from allmende.core.errors import InvalidInput
from tests.conftest import contracts_for


def test_deployment_json_round_trip(deployment: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "deployments.json"

    deployment.save(path)
    loaded = Deployment.load(path)

    data = json.loads(path.read_text())
    assert set(data["contracts"]) == {
        "AllmendeToken",
        "MockStable",
        "Params",
        "Models",
        "Registry",
        "Channels",
        "Verdicts",
        "Timelock",
        "Votes",
        "Governor",
        "Data",
    }
    assert data["chain_id"] == 31337 and data["deploy_block"] >= 0
    assert loaded.address("Channels") == deployment.address("Channels")
    assert loaded.abi("Channels")


def test_missing_deployment_is_a_typed_error(tmp_path: Path, deployment: Deployment) -> None:
    with pytest.raises(DeploymentNotFound, match="no deployments file"):
        Deployment.load(tmp_path / "nope.json")
    with pytest.raises(DeploymentNotFound, match="Oracle"):
        deployment.address("Oracle")


ZERO = "0x" + "00" * 20


def test_devnet_accounts_are_funded(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]) -> None:
    # read the deployment's own transfers: other tests spend from these accounts (stakes,
    # deposits), so balances now say nothing about what the deployment gave them
    c = contracts_for(anvil, deployment, accounts[5])
    end = deployment.deploy_block + 400
    usd = [
        list(e["args"].values()) for e in c.client.events(c.stable.contract, "Transfer", deployment.deploy_block, end)
    ]
    alm = [
        list(e["args"].values()) for e in c.client.events(c.token.contract, "Transfer", deployment.deploy_block, end)
    ]

    for account in accounts:
        assert [ZERO, account.address, DEVNET_USD_PER_ACCOUNT] in usd
    for account in accounts[1:]:  # account 0 deployed: it holds the ALM it hands out
        assert [accounts[0].address, account.address, DEVNET_ALM_PER_ACCOUNT] in alm


def test_revert_reason_becomes_contract_reverted(
    anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]
) -> None:
    stranger = contracts_for(anvil, deployment, accounts[7])
    with pytest.raises(ContractReverted) as info:
        stranger.params.set("protocol_fee_bps", 1)
    assert info.value.reason == "ownable: caller is not the owner"
    with pytest.raises(ContractReverted, match="params: unknown name"):
        stranger.params.get("no_such_param")


def test_typed_input_errors_before_any_rpc(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]) -> None:
    c = contracts_for(anvil, deployment, accounts[7])
    with pytest.raises(AmountOverflow):
        c.channels.open(accounts[8].address, 2**128)
    with pytest.raises(AmountOverflow):
        c.stable.transfer(accounts[8].address, -1)
    with pytest.raises(UnknownModel):
        c.models.get(b"\x99" * 32)


def test_concurrent_transactions_never_reuse_a_nonce(
    anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]
) -> None:
    c = contracts_for(anvil, deployment, accounts[6])
    before = c.stable.balance_of(accounts[9].address)

    with ThreadPoolExecutor(max_workers=8) as pool:
        sent = list(pool.map(lambda _: c.stable.transfer(accounts[9].address, 1), range(24)))

    assert len({s.tx_hash for s in sent}) == 24
    assert c.stable.balance_of(accounts[9].address) == before + 24


def test_processes_sharing_a_key_all_get_their_transfers_mined(
    anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]
) -> None:
    # the devnet faucet: every `allmende faucet`, on any host, sends from account 0; here four
    # clients (each its own nonce counter, as separate processes have) send at the same time
    clients = [ChainClient(anvil.url, accounts[5].key) for _ in range(4)]
    for client in clients:
        client.receipt_timeout = 10  # a dropped transaction must not be waited out
    target = accounts[9].address
    before = clients[0].w3.eth.get_balance(target)

    with ThreadPoolExecutor(max_workers=16) as pool:
        sent = list(pool.map(lambda i: clients[i % 4].send_value(target, 1 + i), range(32)))

    assert len({s.tx_hash for s in sent}) == 32 and all(s.receipt["status"] == 1 for s in sent)
    assert clients[0].w3.eth.get_balance(target) == before + sum(1 + i for i in range(32))


def test_events_are_read_in_pages(anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]) -> None:
    c = contracts_for(anvil, deployment, accounts[4])
    c.token.approve(c.registry.address)
    start = c.client.block_number()
    c.registry.register(ROLE_PROVIDER, "http://events", b"\x02" * 32, 1_000 * 10**18)
    for i in range(3):
        c.registry.set_offer(bytes([i + 1]) * 32, i, i)

    logs = list(c.client.events(c.registry.contract, "OfferSet", from_block=start, page=1))

    assert [log["args"]["price_in"] for log in logs] == [0, 1, 2]
    assert all(log["args"]["provider"] == accounts[4].address for log in logs)


def test_unreachable_node_is_rpc_unavailable() -> None:
    client = ChainClient("http://127.0.0.1:9", timeout=1)
    with pytest.raises(RpcUnavailable, match="unreachable"):
        client.block_number()


def test_client_without_key_cannot_send(anvil: Anvil, deployment: Deployment) -> None:
    reader = ChainClient(anvil.url)
    assert reader.chain_id == 31337
    with pytest.raises(Exception, match="no key"):
        _ = reader.address


def test_receipt_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ChainClient("http://127.0.0.1:9").receipt_timeout == 30
    monkeypatch.setenv("ALLMENDE_RECEIPT_TIMEOUT", "180")
    assert ChainClient("http://127.0.0.1:9").receipt_timeout == 180
    assert ChainClient("http://127.0.0.1:9", receipt_timeout=5).receipt_timeout == 5
    monkeypatch.setenv("ALLMENDE_RECEIPT_TIMEOUT", "soon")
    with pytest.raises(InvalidInput, match="ALLMENDE_RECEIPT_TIMEOUT"):
        ChainClient("http://127.0.0.1:9")


def test_contract_reads_ask_the_node_for_its_chain_id_only_on_the_first_read(
    anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]
) -> None:
    """web3 asks for the chain id before every eth_call (twice) unless it is cached: 100 reads
    sent 300 requests. The client caches eth_chainId for its life and nothing else: a block
    number read again after a block is mined is the new one."""
    c = contracts_for(anvil, deployment, accounts[5])
    sent: list[str] = []
    make_request = c.client.w3.provider._make_request  # what goes over HTTP, after web3's cache

    def counted(method: str, data: bytes) -> bytes:
        sent.append(method)
        return make_request(method, data)

    c.client.w3.provider._make_request = counted  # type: ignore[method-assign]

    balances = {c.token.balance_of(accounts[5].address) for _ in range(20)}

    assert len(balances) == 1
    assert sent.count("eth_call") == 20
    assert sent.count("eth_chainId") <= 2  # the first read's (uncached: 40)
    assert len(sent) <= 22
    before = c.client.block_number()
    c.client.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert c.client.block_number() == before + 1  # block numbers are not cached
