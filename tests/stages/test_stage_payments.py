"""Paid stages: each stage signs a receipt for every call that binds its input and output
activations at its offer's price, the router checks each one and counts what every stage
provider is owed, and a stage whose receipt is not the one its call earns is replaced."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest
from eth_account import Account

from allmende.core.eip712 import Domain
from allmende.core.stages import StageLayout, StagePrice
from allmende.engine import Engine, SamplingParams
from allmende.engine.stages import StageEngine
from allmende.payer.stages import StageOffer, StageRouter, StageSession
from allmende.provider.stage_app import StageSigner, create_stage_app
from tests.stages.conftest import whole_tokens as cached_whole_tokens

DOMAIN = Domain(31337, "0x" + os.urandom(20).hex())
MAX_TOKENS = 8
PRICES = [StagePrice(2), StagePrice(3), StagePrice(4, 50)]


def key() -> bytes:
    return bytes(Account.create().key)


def address(private_key: bytes) -> str:
    return str(Account.from_key(private_key).address)


async def run_chain(
    stages: list[StageEngine],
    offers: list[StageOffer],
    apps: dict[str, StageSigner | None],
    prompt: list[int],
    domain: Domain = DOMAIN,
) -> tuple[list[int], StageSession]:
    engine_of = {f"http://stage{i}": s for i, s in enumerate(stages)}
    engine_of["http://spare1"] = stages[1]  # the same weights; its replay from position 0 starts a fresh cache
    mounts = {url: httpx.ASGITransport(create_stage_app(engine_of[url], signer=signer)) for url, signer in apps.items()}
    async with httpx.AsyncClient(mounts=mounts) as client:  # type: ignore[arg-type]
        layout = StageLayout(tuple(s.spec for s in stages))
        session = StageSession(StageRouter(layout, offers), client, domain=domain)
        tokens = [t async for t in session.generate(prompt, MAX_TOKENS)]
        await session.close()
        return tokens, session


def whole_tokens(whole: Engine, prompt: list[int]) -> list[int]:
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    return cached_whole_tokens(whole, prompt, params)


def test_every_stage_is_owed_what_its_receipts_say(
    whole: Engine, stages3: list[StageEngine], layout3: StageLayout, chat_ids: list[list[int]]
) -> None:
    keys = [key() for _ in stages3]
    offers = [
        StageOffer(spec, f"http://stage{i}", PRICES[i], address(keys[i])) for i, spec in enumerate(layout3.stages)
    ]
    apps: dict[str, StageSigner | None] = {
        f"http://stage{i}": StageSigner(keys[i], DOMAIN, PRICES[i]) for i in range(3)
    }
    prompt = chat_ids[1]

    tokens, session = asyncio.run(run_chain(stages3, offers, apps, prompt))

    positions = len(prompt) + MAX_TOKENS - 1  # every stage computed each position once
    assert tokens == whole_tokens(whole, prompt)
    assert session.owed == {
        address(keys[0]): 2 * positions,
        address(keys[1]): 3 * positions,
        address(keys[2]): 4 * positions + 50 * MAX_TOKENS,
    }
    assert StageRouter(layout3, offers).price(offers) == StagePrice(9, 50)  # the user's price: the sum of the offers
    by_call = [session.receipts[i : i + 3] for i in range(0, len(session.receipts), 3)]
    assert len(by_call) == MAX_TOKENS
    for first, middle, last in by_call:  # a chain of receipts: each stage's output is the next one's input
        assert first.receipt.output_hash == middle.receipt.input_hash
        assert middle.receipt.output_hash == last.receipt.input_hash
        assert [r.receipt.model_id for r in (first, middle, last)] == [s.stage_id for s in layout3.stages]


@pytest.mark.parametrize("attack", ["overcharges", "signs-with-another-key", "sends-no-receipt"])
def test_a_stage_whose_receipt_is_not_earned_is_replaced_and_unpaid(
    whole: Engine, stages3: list[StageEngine], layout3: StageLayout, chat_ids: list[list[int]], attack: str
) -> None:
    keys = [key() for _ in stages3]
    spare_key = key()
    spare_price = StagePrice(5)  # dearer than the cheater's offer: chosen only when it is dropped
    offers = [
        StageOffer(spec, f"http://stage{i}", PRICES[i], address(keys[i])) for i, spec in enumerate(layout3.stages)
    ]
    offers.append(StageOffer(layout3.stages[1], "http://spare1", spare_price, address(spare_key)))
    cheat: StageSigner | None = {
        "overcharges": StageSigner(keys[1], DOMAIN, StagePrice(30)),
        "signs-with-another-key": StageSigner(key(), DOMAIN, PRICES[1]),
        "sends-no-receipt": None,
    }[attack]
    apps: dict[str, StageSigner | None] = {
        "http://stage0": StageSigner(keys[0], DOMAIN, PRICES[0]),
        "http://stage1": cheat,
        "http://stage2": StageSigner(keys[2], DOMAIN, PRICES[2]),
        "http://spare1": StageSigner(spare_key, DOMAIN, spare_price),
    }
    prompt = chat_ids[0]

    tokens, session = asyncio.run(run_chain(stages3, offers, apps, prompt))

    positions = len(prompt) + MAX_TOKENS - 1
    assert tokens == whole_tokens(whole, prompt)
    assert session.hops[1].replaced == 1 and session.hops[1].offer.url == "http://spare1"
    assert address(keys[1]) not in session.owed
    assert session.owed[address(spare_key)] == 5 * positions  # the replay from position 0 is paid once
