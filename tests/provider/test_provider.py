"""The provider end to end: a real process, a real chain, encrypted requests paid by
vouchers, signed receipts, batch redemption with the right split, and bad input."""

from __future__ import annotations

from pathlib import Path

import httpx
from eth_utils import keccak

from allmende.api.client import build_envelope, infer, infer_stream
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.chain.deploy import Deployment
from allmende.core import SignedVoucher, Voucher, model_id_of, sign_voucher, split_payment
from allmende.engine.tiny import ensure_tiny_model
from allmende.provider.settlement import Settlement
from allmende.provider.store import ProviderStore
from tests.conftest import contracts_for
from tests.provider.conftest import PRICE_IN, PRICE_OUT, Running

CHAT = {"messages": [{"role": "user", "content": "Hallo"}], "max_tokens": 12, "temperature": 0}


def tiny_id(running: Running) -> bytes:
    return next(bytes.fromhex(m["model_id"][2:]) for m in running.info.models if m["name"] == "allmende:tiny")


def minilm_id(running: Running) -> bytes:
    return next(bytes.fromhex(m["model_id"][2:]) for m in running.info.models if m["name"] == "minilm")


class Payer:
    """What a gateway does per provider: one channel, a cumulative voucher per model."""

    def __init__(self, running: Running, deposit: int = 10**6) -> None:
        self.r = running
        self.channel = running.as_payer.channels.open(running.info.address, deposit)
        self.owed: dict[bytes, int] = {}
        self.sent: dict[bytes, int] = {}  # highest cumulative already handed to the provider
        self.http = httpx.Client(timeout=60)

    def voucher(self, model_id: bytes) -> SignedVoucher | None:
        """A voucher for everything owed, or None when the provider already holds one for it."""
        owed = self.owed.get(model_id, 0)
        if owed <= self.sent.get(model_id, 0):
            return None
        self.sent[model_id] = owed
        return sign_voucher(Voucher(self.channel, model_id, owed), self.r.voucher_domain, self.r.payer.key)

    def ask(self, model_id: bytes, kind: str, body: dict, **overrides) -> object:
        rid, env, sealer = build_envelope(
            self.r.info,
            model_id,
            kind,
            body,
            self.r.signer,
            self.channel,
            overrides["voucher"] if "voucher" in overrides else self.voucher(model_id),
        )
        answer = infer(self.http, self.r.provider.url, self.r.info, self.r.receipt_domain, env, sealer, rid)
        self.owed[model_id] = self.owed.get(model_id, 0) + answer.receipt.receipt.amount
        return answer


def test_info_is_signed_and_matches_chain(running: Running) -> None:
    account = running.as_payer.registry.account(running.info.address)
    assert account.endpoint == running.provider.url
    assert account.x25519_key == running.info.x25519_key
    for model in running.info.models:
        offer = running.as_payer.registry.offer(running.info.address, bytes.fromhex(model["model_id"][2:]))
        assert (offer.price_in, offer.price_out, offer.active) == (PRICE_IN, PRICE_OUT, True)


def test_tiny_model_id_is_the_constant(running: Running) -> None:
    assert tiny_id(running) == model_id_of(ensure_tiny_model())
    assert "0x" + tiny_id(running).hex() == "0x11419bb2d012e4d1be2e2b08c0a5bf7989eee37483da38f27e1c13a8d3e9ab13"


def test_chat_answer_has_a_valid_receipt_priced_on_chain(running: Running) -> None:
    payer = Payer(running)

    answer = payer.ask(tiny_id(running), "chat", CHAT)

    receipt = answer.receipt.receipt
    assert answer.usage["completion_tokens"] == receipt.tokens_out <= 12
    assert receipt.tokens_in == answer.usage["prompt_tokens"] > 0
    expected = -(-(receipt.tokens_in * PRICE_IN + receipt.tokens_out * PRICE_OUT) // 10**6)
    assert receipt.amount == expected
    assert receipt.output_hash == keccak(answer.output["text"].encode())
    # the chain agrees who signed it
    assert (
        running.as_payer.registry.client.call(
            running.as_payer.registry.contract.functions.receipt_signer(receipt.as_tuple(), answer.receipt.signature)
        )
        == running.info.address
    )


def test_greedy_answers_are_reproducible(running: Running) -> None:
    payer = Payer(running)
    first = payer.ask(tiny_id(running), "chat", CHAT)
    second = payer.ask(tiny_id(running), "chat", CHAT)
    assert first.output["text"] == second.output["text"]


def test_stream_yields_deltas_then_receipt(running: Running) -> None:
    payer = Payer(running)
    body = {**CHAT, "stream": True, "max_tokens": 20}
    rid, env, sealer = build_envelope(running.info, tiny_id(running), "chat", body, running.signer, payer.channel, None)

    items = list(infer_stream(payer.http, running.provider.url, running.info, running.receipt_domain, env, sealer, rid))

    *deltas, final = items
    assert final.receipt.receipt.tokens_out == final.usage["completion_tokens"] > 0
    assert final.receipt.receipt.output_hash == keccak("".join(deltas).encode())


def test_embeddings_from_minilm(running: Running) -> None:
    payer = Payer(running)
    answer = payer.ask(minilm_id(running), "embedding", {"input": ["a cat sits", "a cat is sitting", "stock prices"]})

    vectors = answer.output["embeddings"]
    assert [len(v) for v in vectors] == [384, 384, 384]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2])
    assert answer.receipt.receipt.tokens_out == 0 and answer.receipt.receipt.amount > 0


def test_vouchers_redeem_to_the_receipts_split(
    running: Running, anvil: Anvil, deployment: Deployment, accounts: list[DevnetAccount]
) -> None:
    payer = Payer(running)
    model = tiny_id(running)
    costs = []
    for _ in range(4):  # the voucher sent with request k pays for requests 1..k-1
        costs.append(payer.ask(model, "chat", CHAT).receipt.receipt.amount)
    as_provider = contracts_for(anvil, deployment, accounts[2])
    treasury = as_provider.channels.treasury()
    before = {who: as_provider.channels.earnings(who) for who in (running.info.address, treasury)}
    store = ProviderStore(state_dir(running) / "provider.db")
    settlement = Settlement(store, as_provider.channels)
    pending = [r.cumulative - r.redeemed for r in settlement.pending()]

    result = settlement.redeem(force=True)

    fee_bps = as_provider.params.get("protocol_fee_bps")
    fees = sum(split_payment(amount, 0, fee_bps).protocol_fee for amount in pending)
    assert as_provider.channels.redeemed(payer.channel, model) == sum(costs[:3])
    assert result.amount == sum(pending)
    assert as_provider.channels.earnings(treasury) - before[treasury] == fees
    # whichever provider of this session registered the tiny model first did so with royalty 0
    # (the default), so this provider gets all but the fee
    assert as_provider.models.owner_of(model) is not None
    assert as_provider.channels.earnings(running.info.address) - before[running.info.address] == sum(pending) - fees
    assert settlement.pending() == []


def state_dir(running: Running) -> Path:
    return Path(running.provider.args[running.provider.args.index("--state-dir") + 1])


def test_answer_carries_a_proof_bound_by_the_receipt(running: Running) -> None:
    payer = Payer(running)
    answer = payer.ask(tiny_id(running), "chat", {**CHAT, "max_tokens": 40})

    proof = bytes.fromhex(answer.output["proof"][2:])
    assert len(proof) > 0 and len(answer.output["token_ids"]) == answer.receipt.receipt.tokens_out
    assert answer.receipt.receipt.proof_hash == keccak(proof)
