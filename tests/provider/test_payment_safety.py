"""Issue 42: a provider is paid for what it served, against a real provider process and anvil.

- a payer that cuts its streams gets no free work: each cut stream is billed for the prompt
  and the tokens sent, and unpaid work per channel stays under the credit limit;
- a channel closed (and withdrawn) while its voucher was unredeemed does not block the
  redeem of the others: it is dropped and reported, the live ones are paid;
- a close followed by silence is seen and the last voucher redeemed before the close time,
  with as little time left as the minimum close delay Params allows (the chain's clock is
  moved with anvil's evm_increaseTime, never slept through);
- a close followed by more requests: served while the close is far, refused once it is
  within the provider's close margin.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from eth_account import Account

from allmende.api.client import Answer, PayerKey, ProviderReplyError, build_envelope, infer, infer_stream
from allmende.chain import ChainClient, Contracts
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.chain.deploy import Deployment
from allmende.core import SignedReceipt, SignedVoucher, Voucher, request_cost, sign_voucher
from allmende.provider.settlement import Settlement
from allmende.provider.store import ProviderStore
from allmende.provider.watch import ChainClock
from tests.conftest import contracts_for
from tests.provider.conftest import PRICE_IN, PRICE_OUT, Running

CREDIT_LIMIT = 1000  # the `running` provider's --credit-limit
CHAT = {"messages": [{"role": "user", "content": "Erzähl mir etwas"}], "temperature": 0}


def state_dir(running: Running) -> Path:
    return Path(running.provider.args[running.provider.args.index("--state-dir") + 1])


def tiny_id(running: Running) -> bytes:
    return next(bytes.fromhex(m["model_id"][2:]) for m in running.info.models if m["name"] == "allmende:tiny")


class FreshPayer:
    """A payer nobody else uses: a new key with devnet ETH and dUSD, one channel to the provider."""

    def __init__(self, running: Running, anvil: Anvil, deployment: Deployment, admin: DevnetAccount) -> None:
        self.running = running
        key = os.urandom(32)
        self.address = Account.from_key(key).address
        bank = Contracts(ChainClient(anvil.url, admin.key), deployment)
        bank.client.send_value(self.address, 10**18)
        bank.stable.mint(self.address, 10**8)
        self.contracts = Contracts(ChainClient(anvil.url, key), deployment)
        self.contracts.stable.approve(self.contracts.channels.address)
        self.key = PayerKey(key, running.voucher_domain)
        self.deposit = 10**6
        self.channel = self.contracts.channels.open(running.info.address, self.deposit)
        self.owed = 0  # receipts answered so far

    def voucher(self, model: bytes, amount: int | None = None) -> SignedVoucher:
        cumulative = self.owed if amount is None else amount
        return sign_voucher(Voucher(self.channel, model, cumulative), self.running.voucher_domain, self.key.key)

    def ask(self, http: httpx.Client, model: bytes, voucher: SignedVoucher | None = None) -> Answer:
        r = self.running
        body = {**CHAT, "max_tokens": 8}
        rid, env, sealer = build_envelope(r.info, model, "chat", body, self.key, self.channel, voucher)
        answer = infer(http, r.provider.url, r.info, r.receipt_domain, env, sealer, rid)
        self.owed += answer.receipt.receipt.amount
        return answer


@pytest.fixture
def admin(accounts: list[DevnetAccount]) -> DevnetAccount:
    return accounts[0]


T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        threading.Event().wait(0.1)


# ---------------------------------------------------------------------------- cut streams


def test_payer_cutting_streams_at_random_points_gets_no_free_work(
    running: Running, anvil: Anvil, deployment: Deployment, admin: DevnetAccount
) -> None:
    # Prepare: 4 channels without a single voucher, 12 clients on each (48 at once), each
    # starting 3 streams one after the other and cutting each after a random number of deltas
    payers = [FreshPayer(running, anvil, deployment, admin) for _ in range(4)]
    model = tiny_id(running)
    rng = random.Random(42)
    plans = [(payers[i % 4], [rng.randint(1, 24) for _ in range(3)]) for i in range(48)]
    served: list[tuple[FreshPayer, bytes, int, Answer | None]] = []  # payer, request, tokens received, answer
    refused: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(payer: FreshPayer, cuts: list[int]) -> None:
        with httpx.Client(timeout=60) as http:
            for cut in cuts:
                body = {**CHAT, "stream": True, "max_tokens": 256}
                rid, env, sealer = build_envelope(running.info, model, "chat", body, payer.key, payer.channel, None)
                items = infer_stream(http, running.provider.url, running.info, running.receipt_domain, env, sealer, rid)
                received, answer = 0, None
                try:
                    for item in items:
                        if isinstance(item, Answer):
                            answer = item
                            break
                        received += item.tokens
                        if received >= cut:
                            break  # the payer walks away mid-stream
                except ProviderReplyError as exc:
                    with lock:
                        (refused if exc.status == 402 else failures).append(f"{exc.status} {exc.code}: {exc.message}")
                    continue
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                finally:
                    items.close()
                with lock:
                    served.append((payer, rid, received, answer))

    # Execute
    with ThreadPoolExecutor(len(plans)) as pool:
        for future in [pool.submit(client, payer, cuts) for payer, cuts in plans]:
            future.result()

    # Assert: nothing failed but refusals for payment, and the credit limit did bite
    assert failures == []
    assert refused, "the payers got every stream they asked for: the credit limit never applied"
    assert all("credit limit" in r or "deposit" in r for r in refused), refused[:3]
    store = ProviderStore(state_dir(running) / "provider.db")
    try:
        # every served stream has a signed receipt for at least the tokens its payer received
        receipts = wait_until(
            "a receipt for every served stream",
            lambda: (
                all(store.receipt(rid) for _, rid, _, _ in served) and [store.receipt(rid) for _, rid, _, _ in served]
            ),
        )
        billed = 0
        for (_, rid, received, answer), raw in zip(served, receipts, strict=True):
            signed = SignedReceipt.from_json(json.loads(raw))
            signed.verify(running.receipt_domain)
            r = signed.receipt
            assert r.provider == running.info.address and r.request_id == rid
            assert r.tokens_out >= received, f"receipt for {r.tokens_out} tokens, {received} were received"
            assert r.amount >= request_cost(r.tokens_in, received, PRICE_IN, PRICE_OUT)
            if answer is not None:
                assert answer.receipt == signed
            billed += r.amount
        for payer in payers:
            ledger = store.ledger(payer.channel)
            earned = sum(row.earned for row in ledger)
            vouchers = sum(row.cumulative for row in ledger)
            mine = [rid for p, rid, _, _ in served if p is payer]
            assert vouchers == 0
            # earned covers what was sent, and unpaid work never exceeded the credit limit
            assert earned == sum(
                SignedReceipt.from_json(json.loads(store.receipt(rid) or "")).receipt.amount for rid in mine
            )
            assert 0 < earned <= CREDIT_LIMIT
        assert billed == sum(sum(row.earned for row in store.ledger(p.channel)) for p in payers)
    finally:
        store.close()


# ------------------------------------------------------------------------------ settlement


def test_payer_closing_and_withdrawing_cannot_block_the_redeem_of_other_channels(
    running: Running, anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount], tmp_path: Path
) -> None:
    # Prepare: four channels to the provider with unredeemed vouchers; two of them are closed
    # and withdrawn before the provider redeems (it was offline through their close windows),
    # one of those two it has seen closing, the other not
    admin = accounts[0]
    model = tiny_id(running)
    live = [FreshPayer(running, anvil, deployment, admin) for _ in range(2)]
    seen, unseen = FreshPayer(running, anvil, deployment, admin), FreshPayer(running, anvil, deployment, admin)
    store = ProviderStore(tmp_path / "provider.db")
    amounts = {live[0]: 900_000, live[1]: 300_000, seen: 400_000, unseen: 500_000}
    for payer, amount in amounts.items():
        store.store_voucher(payer.voucher(model, amount))
    for payer in (seen, unseen):
        payer.contracts.channels.request_close(payer.channel)
    record = seen.contracts.channels.channel(seen.channel)
    store.put_channel(seen.channel, record.payer, record.deposit, record.closes_at)
    delay = seen.contracts.params.get("channel_close_delay")
    ChainClient(anvil.url, admin.key).increase_time(delay + 1)
    for payer in (seen, unseen):
        payer.contracts.channels.withdraw(payer.channel)
    as_provider = contracts_for(anvil, deployment, accounts[2])
    clock = ChainClock()  # as the provider's close watcher keeps it: the devnet's clock moved
    clock.observe(as_provider.client.timestamp(), time.time())
    settlement = Settlement(store, as_provider.channels, clock=clock)

    # Execute
    result = settlement.redeem(force=True)

    # Assert: the live channels are paid in the same pass, the closed ones dropped and reported
    try:
        channels = as_provider.channels
        assert [channels.redeemed(p.channel, model) for p in live] == [900_000, 300_000]
        assert result.vouchers == 2 and result.amount == 1_200_000
        assert {(d.channel_id, d.amount) for d in result.dropped} == {
            (seen.channel, 400_000),
            (unseen.channel, 500_000),
        }
        reasons = {d.channel_id: d.reason for d in result.dropped}
        assert reasons[seen.channel] == "channel closed"  # known closed: not even sent
        assert reasons[unseen.channel] == "channels: channel closed"  # the chain's own refusal
        assert [channels.redeemed(p.channel, model) for p in (seen, unseen)] == [0, 0]
        assert set(store.dropped()) == {(seen.channel, model), (unseen.channel, model)}
        assert settlement.pending() == []
        assert settlement.redeem(force=True).vouchers == 0  # nothing is retried for ever
    finally:
        store.close()


def test_payer_closing_a_quiet_channel_does_not_outrun_the_redeem(
    running: Running, anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]
) -> None:
    # Prepare: a voucher the provider holds and has no reason to redeem yet (far below its
    # threshold, far younger than its max age), then a close and no request ever again
    admin = accounts[0]
    model = tiny_id(running)
    payer = FreshPayer(running, anvil, deployment, admin)
    with httpx.Client(timeout=60) as http:
        payer.ask(http, model)
        owed = payer.owed
        payer.ask(http, model, payer.voucher(model))
    channels = payer.contracts.channels
    assert channels.redeemed(payer.channel, model) == 0

    # Execute: the close, then as little time left as the minimum close delay Params allows
    channels.request_close(payer.channel)
    closes_at = channels.channel(payer.channel).closes_at
    bank = ChainClient(anvil.url, admin.key)
    minimum = payer.contracts.params.lower_bound("channel_close_delay")
    bank.increase_time(max(0, closes_at - bank.timestamp() - minimum))

    # Assert: redeemed before the close (the provider was online), then the payer takes the rest
    wait_until("the provider to redeem the closing channel", lambda: channels.redeemed(payer.channel, model) == owed)
    redeemed = next(iter(bank.events(channels.contract, "Redeemed", 0, argument_filters={"channel_id": payer.channel})))
    assert bank.w3.eth.get_block(redeemed["blockNumber"])["timestamp"] < closes_at
    bank.increase_time(closes_at - bank.timestamp() + 1)
    before = payer.contracts.stable.balance_of(payer.address)
    channels.withdraw(payer.channel)
    assert payer.contracts.stable.balance_of(payer.address) - before == payer.deposit - owed


def provider_block(running: Running) -> int:
    reply = httpx.get(f"{running.provider.url}/healthz", timeout=5).json()
    return int(reply.get("chain_block") or 0)


def test_payer_closing_then_asking_for_more_is_served_only_while_the_close_is_far(
    running: Running, anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]
) -> None:
    # Prepare: a channel in use, then its close requested (a day to go on the devnet)
    admin = accounts[0]
    model = tiny_id(running)
    payer = FreshPayer(running, anvil, deployment, admin)
    channels = payer.contracts.channels
    bank = ChainClient(anvil.url, admin.key)
    with httpx.Client(timeout=60) as http:
        payer.ask(http, model)
        channels.request_close(payer.channel)
        closes_at = channels.channel(payer.channel).closes_at
        wait_until("the provider to follow the chain", lambda: provider_block(running) >= bank.block_number())

        # Execute / Assert: far from the close, a request is served (and its voucher redeemed)
        served = payer.ask(http, model, payer.voucher(model))
        assert served.receipt.receipt.amount > 0
        paid = payer.owed - served.receipt.receipt.amount
        wait_until("the closing channel's voucher redeemed", lambda: channels.redeemed(payer.channel, model) == paid)

        # ... within the close margin (600 s), the next one is refused, but its voucher is kept
        bank.increase_time(closes_at - bank.timestamp() - 300)
        wait_until("the provider to follow the chain", lambda: provider_block(running) >= bank.block_number())
        with pytest.raises(ProviderReplyError) as refused:
            payer.ask(http, model, payer.voucher(model))
    assert refused.value.status == 402 and "closing" in refused.value.message
    wait_until("the last voucher redeemed", lambda: channels.redeemed(payer.channel, model) == payer.owed)
