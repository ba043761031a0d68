"""A chain without a base fee, at an older EVM (anvil --hardfork berlin): the contracts compile
for `london` (no PUSH0, no cancun opcodes), every transaction is a legacy one with a gasPrice
(web3's EIP-1559 defaults fail there with KeyError: 'baseFeePerGas'), and a node that joins from
the published view compiles for the same EVM version and recognises the code."""

from __future__ import annotations

from allmende.chain import ChainClient, Contracts, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.network import from_public, public_view, verify_deployment


def test_deploy_and_transact_on_a_chain_without_base_fee() -> None:
    accounts = devnet_accounts(3)
    with Anvil(hardfork="berlin") as node:
        client = ChainClient(node.url, accounts[0].key)
        assert client.legacy_gas()
        deployment = deploy_all(client, fund=[accounts[1].address], evm_version="london")
        assert deployment.evm_version == "london"

        payer = Contracts(ChainClient(node.url, accounts[1].key), deployment)
        sent = payer.stable.approve(payer.channels.address)
        tx = payer.client.w3.eth.get_transaction(sent.tx_hash)  # type: ignore[arg-type]
        assert tx["type"] == 0 and tx["gasPrice"] > 0

        joined = from_public(public_view(deployment))
        assert joined.evm_version == "london"
        verify_deployment(ChainClient(node.url), joined)
