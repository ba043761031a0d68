"""Log reads behind an endpoint that limits eth_getLogs ranges, as hosted ones do (Alchemy:
"query exceeds max block range 1000"; here 50 blocks): a real HTTP JSON-RPC proxy in front of
anvil refuses wider ranges, and the directory, `allmende status`, the royalty read and the
explorer's event tail still read every log, from the deployment block on. The same proxy
rewords a refused nonce as Ganache does, and the client still resynchronises."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from allmende.api.directory import Directory
from allmende.chain import ChainClient, Contracts, Deployment, deploy_all
from allmende.chain.anvil import Anvil, devnet_accounts
from allmende.chain.errors import LogRangeTooLarge, RpcRefused
from allmende.chain.royalties import royalty_history
from allmende.cli import app
from allmende.core import Voucher, sign_voucher
from allmende.gateway.explorer_chain import EventTail

MAX_RANGE = 50
PAYER, PROVIDER = 3, 4
MODEL = bytes.fromhex("ab" * 32)


class RangeLimitingProxy:
    """Forwards JSON-RPC to `upstream`; refuses eth_getLogs over more than `limit` blocks."""

    def __init__(self, upstream: str, limit: int, reword: dict[str, str] | None = None) -> None:
        self.upstream, self.limit, self.reword = upstream, limit, reword or {}
        self.refused = 0
        self.served: list[tuple[int, int]] = []
        self.http = httpx.Client(timeout=30)  # kept-alive connections upstream, shared by the threads
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive towards the clients too (a node sends hundreds of calls)
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms wait between them

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = proxy.answer(body)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _block(self, tag: Any) -> int:
        if isinstance(tag, str) and tag.startswith("0x"):
            return int(tag, 16)
        request = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
        head = self.http.post(self.upstream, json=request)
        return int(head.json()["result"], 16) if tag in (None, "latest", "pending", "safe", "finalized") else 0

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("method") == "eth_getLogs":
            query = body["params"][0]
            first, last = self._block(query.get("fromBlock", "latest")), self._block(query.get("toBlock", "latest"))
            if last - first + 1 > self.limit:
                self.refused += 1
                message = f"query exceeds max block range {self.limit}"
                return {"jsonrpc": "2.0", "id": body.get("id"), "error": {"code": -32600, "message": message}}
            self.served.append((first, last))
        answer = dict(self.http.post(self.upstream, json=body).json())
        error = answer.get("error")
        if isinstance(error, dict):
            for words, instead in self.reword.items():
                if words in str(error.get("message", "")):
                    answer["error"] = {**error, "message": instead}
        return answer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RangeLimitingProxy, Deployment, Path]]:
    accounts = devnet_accounts(10)
    with Anvil() as node:
        admin = ChainClient(node.url, accounts[0].key)
        admin.w3.provider.make_request("anvil_mine", [hex(300)])  # type: ignore[arg-type]  # history before it
        deployment = deploy_all(admin, fund=[accounts[PAYER].address, accounts[PROVIDER].address])
        payer = Contracts(ChainClient(node.url, accounts[PAYER].key), deployment)
        payer.stable.approve(payer.channels.address)
        channel = payer.channels.open(accounts[PROVIDER].address, 10**7)
        provider = Contracts(ChainClient(node.url, accounts[PROVIDER].key), deployment)
        for cumulative in (1_000_000, 3_000_000):  # two redeems 200 blocks apart
            admin.w3.provider.make_request("anvil_mine", [hex(200)])  # type: ignore[arg-type]
            voucher = Voucher(channel, MODEL, cumulative)
            provider.channels.redeem([sign_voucher(voucher, payer.channels.voucher_domain(), accounts[PAYER].key)])
        admin.w3.provider.make_request("anvil_mine", [hex(120)])  # type: ignore[arg-type]
        path = tmp_path_factory.mktemp("paging") / "deployments.json"
        deployment.save(path)
        proxy = RangeLimitingProxy(node.url, MAX_RANGE)
        try:
            yield proxy, deployment, path
        finally:
            proxy.stop()


def test_the_proxy_refuses_wide_ranges_with_a_typed_error(network) -> None:
    proxy, deployment, _ = network
    client = ChainClient(proxy.url)
    query: Any = {"fromBlock": 0, "toBlock": client.block_number()}
    with pytest.raises(RpcRefused, match="max block range"):
        client.rpc(lambda: client.w3.eth.get_logs(query))
    # a node that refuses even one block is a typed error too, not a loop
    tight = RangeLimitingProxy(proxy.upstream, 0)
    try:
        with pytest.raises(LogRangeTooLarge):
            list(ChainClient(tight.url).logs({}, deployment.deploy_block, deployment.deploy_block + 3))
    finally:
        tight.stop()


def test_events_are_paged_from_the_deployment_block_and_halved(network) -> None:
    proxy, deployment, _ = network
    direct = Contracts(ChainClient(proxy.upstream), deployment)
    client = ChainClient(proxy.url)
    c = Contracts(client, deployment)
    before = len(proxy.served)
    through = list(client.events(c.channels.contract, "Redeemed", deployment.deploy_block))
    expected = list(direct.client.events(direct.channels.contract, "Redeemed", deployment.deploy_block))
    assert len(through) == len(expected) == 2
    assert [e["transactionHash"] for e in through] == [e["transactionHash"] for e in expected]
    assert proxy.refused > 0 and client.log_page <= MAX_RANGE
    assert min(first for first, _ in proxy.served[before:]) == deployment.deploy_block  # never from block 0


def test_directory_status_royalties_and_explorer_read_through_the_limit(network, caplog, tmp_path: Path) -> None:
    proxy, deployment, path = network
    c = Contracts(ChainClient(proxy.url), deployment)

    history = royalty_history(c, MODEL)
    assert (history.redeems, history.redeemed, history.channels) == (2, 3_000_000, 1)

    tail = EventTail(c, c.channels.contract, "Redeemed")
    assert len(tail.poll(c.client.block_number())) == 2

    with caplog.at_level(logging.WARNING), httpx.Client() as http:
        directory = Directory(c, http)
        directory.maybe_refresh()
    assert "deferred" not in caplog.text
    assert directory._last_block == c.client.block_number()

    env = {"ALLMENDE_STATE_DIR": str(tmp_path), "ALLMENDE_RPC": None, "ALLMENDE_DEPLOYMENTS": None}
    line = ["status", "--rpc", proxy.url, "--deployments", str(path), "--json"]
    result = CliRunner().invoke(app, line, env=env)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["channels"]) == 1


def test_a_nonce_conflict_in_other_words_is_resynchronised(network) -> None:
    """Ganache refuses a used nonce with "the tx doesn't have the correct nonce": the client
    recognises the conflict by the node's count, not by anvil's or geth's wording."""
    proxy, _, _ = network
    ganache = RangeLimitingProxy(proxy.upstream, 10**9, {"nonce": "the tx doesn't have the correct nonce"})
    key = devnet_accounts(10)[7].key
    try:
        first, second = ChainClient(ganache.url, key), ChainClient(ganache.url, key)
        to = devnet_accounts(10)[8].address
        first.send_value(to, 1)  # first now counts on the next nonce …
        second.send_value(to, 1)  # … which second takes
        sent = first.send_value(to, 1)  # refused in Ganache's words, resynchronised, sent
        assert sent.receipt["status"] == 1
    finally:
        ganache.stop()
