"""Routing a chain of stage providers for one model, and generating through it.

The router knows, for each stage of a model's layout, the providers that offer it
(`StageOffer`: the stage, an endpoint, a price per token and the latency measured so far).
A session picks the cheapest, then fastest, live provider of each stage — with a fixed
layout every stage is chosen independently, so that is the shortest path Petals searches
for over servers of overlapping block ranges — and keeps that chain for its whole life.

The session keeps what each stage was sent (the token ids for the first, the previous
stage's output rows for the others). When a stage fails mid-generation (its process died,
its connection dropped, it lost the session), the session marks it dead, picks another
provider of the same stage and replays that stage's whole input from position 0: the
replacement rebuilds the KV cache and answers the current step, whose rows go on to the
next stage. Earlier stages keep their caches, later stages never see the failure: no token
is lost or drawn twice, and the draw, a function of (seed, position) and the logits, is the
one the dead stage would have made.

A paid chain (offers with a provider address and an X25519 key, a session with a
`StagePayer`) seals every call to its provider's key (`api.stages.seal_call`) and pays it
on its own: the payer holds the most the provider can earn in the session on the channel to
it before the provider is first called (a replacement included, before its replay), signs
the call's authorization and attaches its cumulative voucher for (channel, stage); every
checked receipt is owed from then on, so the next call's voucher covers it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import numpy as np
from eth_utils import to_checksum_address

from allmende.api.stages import (
    CLOSE_PATH,
    FORWARD_PATH,
    MEDIA_TYPE,
    CallPayment,
    Draw,
    ForwardReply,
    ForwardRequest,
    activation_hash,
    open_reply,
    seal_call,
    seal_close,
    token_array,
)
from allmende.core.eip712 import Domain
from allmende.core.envelope import ResponseSealer
from allmende.core.errors import InvalidInput, InvalidSignature, UpstreamError
from allmende.core.receipts import SignedReceipt
from allmende.core.stages import InvalidStage, StageLayout, StagePrice, StageSpec, stage_receipt
from allmende.core.vouchers import SignedVoucher, Voucher, sign_voucher

LATENCY_WEIGHT = 0.2  # weight of a new latency sample in a provider's moving average


class BadStageReply(UpstreamError):
    """A stage's reply that is not the answer to the call (hashes, shape, receipt)."""

    code = "bad_stage_reply"


class NoStageProvider(UpstreamError):
    """No live provider offers a stage the model needs."""

    code = "no_provider_available"
    status = 503


@dataclass
class StageOffer:
    """One provider's offer of one stage."""

    stage: StageSpec
    url: str  # the provider's stage endpoint, e.g. http://10.0.0.7:8600
    price: StagePrice = field(default_factory=StagePrice)  # its offer, in the payment token's smallest unit
    provider: str | None = None  # its address: every call must come with its signed receipt
    x25519: bytes | None = None  # its X25519 key (signed /v1/info, on chain): calls are sealed to it
    latency: float = 0.0  # seconds per call, moving average (0: not measured yet)
    dead: bool = False

    def observe(self, seconds: float) -> None:
        self.latency = (
            seconds if self.latency == 0.0 else (1 - LATENCY_WEIGHT) * self.latency + LATENCY_WEIGHT * seconds
        )


class StageRouter:
    """The offers of one model's stages, and the choice of a provider per stage."""

    def __init__(self, layout: StageLayout, offers: Iterable[StageOffer]) -> None:
        self.layout = layout
        self.offers: dict[bytes, list[StageOffer]] = {s.stage_id: [] for s in layout.stages}
        for offer in offers:
            if offer.stage.stage_id not in self.offers:
                raise InvalidStage(f"offer of {offer.stage.stage_id_hex}, which is not a stage of this layout")
            self.offers[offer.stage.stage_id].append(offer)

    def pick(self, stage: StageSpec) -> StageOffer:
        """The live offer of `stage` with the lowest price, then the lowest latency."""
        live = [o for o in self.offers[stage.stage_id] if not o.dead]
        if not live:
            raise NoStageProvider(f"no live provider serves blocks {stage.range.start}-{stage.range.end}")
        return min(live, key=lambda o: (o.price.per_position + o.price.per_token, o.latency))

    def chain(self) -> list[StageOffer]:
        return [self.pick(s) for s in self.layout.stages]

    def price(self, chain: list[StageOffer]) -> StagePrice:
        """The price of a chain: the sum of its stages' offers."""
        return StagePrice(sum(o.price.per_position for o in chain), sum(o.price.per_token for o in chain))


class StagePayer(Protocol):
    """How a session pays its stage providers (the gateway's channels: gateway/staged.py)."""

    async def hold(self, offer: StageOffer, last: bool) -> None:
        """Reserve on the channel to `offer`'s provider the most it can earn in this session;
        called once per provider before it is first called. NoStageProvider when it cannot."""

    def pay(self, offer: StageOffer, call: ForwardRequest) -> CallPayment:
        """The call's payment: its channel, the payer's signature, the voucher owed so far."""

    def paid(self, offer: StageOffer, receipt: SignedReceipt, payment: CallPayment) -> None:
        """A checked receipt of a call that carried `payment`: owed from now on."""

    def unsettled(self, offer: StageOffer, cost: int) -> None:
        """A call whose outcome is unknown (sent, no answer): the provider may have earned `cost`."""


@dataclass
class Hop:
    """What one stage of a session was sent and answered."""

    offer: StageOffer
    inputs: list[np.ndarray] = field(default_factory=list)  # every input, in order, from position 0
    replies: list[ForwardReply] = field(default_factory=list)  # what this hop's providers answered
    replaced: int = 0  # how many times this stage's provider was replaced


class StageSession:
    """One generation through a chain of stages, with failover by replay."""

    def __init__(
        self,
        router: StageRouter,
        client: httpx.AsyncClient,
        session: str | None = None,
        timeout: float = 60.0,
        domain: Domain | None = None,  # the receipts' EIP-712 domain (the Registry's), for paid stages
        payer: StagePayer | None = None,  # pays every call (paid stages refuse calls without)
        chain: list[StageOffer] | None = None,  # the providers to call (default: the router's chain)
    ) -> None:
        self.router = router
        self.client = client
        self.session = session or secrets.token_hex(16)
        self.timeout = timeout
        self.domain = domain
        self.payer = payer
        self._held: set[int] = set()  # offers (by id) the payer holds a reservation on
        self.hops = [Hop(offer) for offer in (chain if chain is not None else router.chain())]
        self.position = 0  # positions every stage has cached
        self.tokens: list[int] = []  # drawn so far
        self.owed: dict[str, int] = {}  # provider address -> the amounts of its checked receipts
        self.owed_by_stage: dict[tuple[str, bytes], int] = {}  # (provider, stage id) -> the same, per stage
        self.receipts: list[SignedReceipt] = []

    async def reserve(self) -> None:
        """The payer's reservation at every stage provider of the chain, before the first call
        (NoStageProvider, before any stage works, when one has no room)."""
        for index, hop in enumerate(self.hops):
            await self._hold(hop.offer, index == len(self.hops) - 1)

    async def _hold(self, offer: StageOffer, last: bool) -> None:
        if self.payer is not None and id(offer) not in self._held:
            await self.payer.hold(offer, last)
            self._held.add(id(offer))

    async def _call(self, hop: Hop, start: int, rows: np.ndarray, draw: Draw | None) -> ForwardReply:
        offer = hop.offer
        stage = offer.stage
        call = ForwardRequest(stage.stage_id, self.session, start, rows, draw)
        if self.payer is not None:
            await self._hold(offer, draw is not None)  # a replacement's reservation, before its replay
            call = dataclasses.replace(call, payment=self.payer.pay(offer, call))
        sealer: ResponseSealer | None = None
        if offer.x25519 is not None:
            if offer.provider is None:
                raise InvalidStage(f"stage provider {offer.url} has a key but no address to seal to")
            body, sealer = seal_call(call, offer.x25519, offer.provider)
        else:
            body = call.encode()
        began = time.monotonic()
        try:
            reply = await self.client.post(
                offer.url.rstrip("/") + FORWARD_PATH, content=body, headers={"content-type": MEDIA_TYPE},
                timeout=self.timeout,
            )  # fmt: skip
        except httpx.HTTPError as exc:
            if not isinstance(exc, httpx.ConnectError):  # sent: the provider may have served and earned it
                self._unsettled(offer, call, draw)
            raise
        if reply.status_code != 200:
            raise UpstreamError(f"stage provider {offer.url} answered {reply.status_code}: {reply.text[:200]}")
        offer.observe(time.monotonic() - began)
        try:
            answer = ForwardReply.decode(reply.content) if sealer is None else open_reply(sealer, reply.content)
        except InvalidInput:  # garbled on the way or by the provider: it may have earned the call all the same
            self._unsettled(offer, call, draw)
            raise
        self._check(offer, start, rows, draw, answer)
        if self.payer is not None and call.payment is not None and answer.receipt is not None:
            self.payer.paid(offer, answer.receipt, call.payment)
        return answer

    def _unsettled(self, offer: StageOffer, call: ForwardRequest, draw: Draw | None) -> None:
        if self.payer is not None and call.payment is not None:
            self.payer.unsettled(offer, offer.price.amount(int(call.input.shape[0]), 0 if draw is None else 1))

    def _check(self, offer: StageOffer, start: int, rows: np.ndarray, draw: Draw | None, answer: ForwardReply) -> None:
        """The reply is the stage's answer to this call: its hashes name what was sent and what
        came back, and a paid stage's receipt binds them at the offer's price, signed by the
        offer's provider. A stage that fails this is treated as a dead one (replaced)."""
        got = answer.hidden if answer.hidden is not None else token_array(answer.token or 0)
        if answer.input_hash != activation_hash(rows) or answer.output_hash != activation_hash(got):
            raise BadStageReply(f"stage provider {offer.url}'s hashes do not match its input and output")
        if (answer.hidden is None) != (draw is not None):
            raise BadStageReply(f"stage provider {offer.url} answered with the wrong kind of output")
        if answer.hidden is not None and (answer.hidden.ndim != 2 or answer.hidden.shape[0] != rows.shape[0]):
            raise BadStageReply(f"stage provider {offer.url} answered other rows than it was sent")
        if offer.provider is None:
            return
        signed = answer.receipt
        if signed is None or self.domain is None:
            raise BadStageReply(f"paid stage provider {offer.url} sent no receipt")
        expected = stage_receipt(
            offer.stage, offer.provider, self.session, start, int(rows.shape[0]), answer.input_hash,
            answer.output_hash, answer.proof, offer.price, signed.receipt.timestamp,
        )  # fmt: skip
        if signed.receipt != expected:
            raise BadStageReply(f"stage provider {offer.url}'s receipt is not the one this call earns")
        try:
            signed.verify(self.domain)
        except InvalidSignature as exc:
            raise BadStageReply(f"stage provider {offer.url}'s receipt: {exc}") from None
        self.receipts.append(signed)
        r = signed.receipt
        self.owed[r.provider] = self.owed.get(r.provider, 0) + r.amount
        self.owed_by_stage[(r.provider, r.model_id)] = self.owed_by_stage.get((r.provider, r.model_id), 0) + r.amount

    async def send(self, index: int, rows: np.ndarray, draw: Draw | None) -> ForwardReply:
        """Send the new `rows` to hop `index` at the session's position, with no failover: a
        validator's audit call (`validator.stages`), sealed, paid and checked like every call,
        whose failure is its provider's to answer for, not a stage to replace. The caller
        moves `position` on once every hop it drives has taken the rows."""
        hop = self.hops[index]
        reply = await self._call(hop, self.position, rows, draw)
        hop.inputs.append(rows)
        hop.replies.append(reply)
        return reply

    async def _through(self, index: int, rows: np.ndarray, draw: Draw | None) -> ForwardReply:
        """Send the new `rows` to stage `index`; on failure, replace its provider and replay."""
        hop = self.hops[index]
        hop.inputs.append(rows)
        try:
            reply = await self._call(hop, self.position, rows, draw)
        except (httpx.HTTPError, UpstreamError, InvalidInput):  # InvalidInput: a bad or unsealable reply
            reply = await self._replace(index, rows.shape[0], draw)
        hop.replies.append(reply)
        return reply

    async def _replace(self, index: int, new_rows: int, draw: Draw | None) -> ForwardReply:
        hop = self.hops[index]
        history = np.concatenate(hop.inputs, axis=0)
        while True:
            hop.offer.dead = True
            hop.offer = self.router.pick(hop.offer.stage)  # NoStageProvider when none is left
            hop.replaced += 1
            try:
                reply = await self._call(hop, 0, history, draw)
            except (httpx.HTTPError, UpstreamError, InvalidInput):  # no room on its channel included
                continue
            if reply.hidden is not None:  # only the current step's rows go on to the next stage
                reply = dataclasses.replace(reply, hidden=reply.hidden[-new_rows:])
            return reply

    async def step(self, rows: np.ndarray, draw: Draw) -> int:
        """Run `rows` (token ids) through every stage and return the token drawn."""
        data: np.ndarray = rows
        reply: ForwardReply | None = None
        last = len(self.hops) - 1
        for index in range(len(self.hops)):
            reply = await self._through(index, data, draw if index == last else None)
            if index < last:
                assert reply.hidden is not None
                data = reply.hidden
        assert reply is not None and reply.token is not None
        self.position += rows.shape[0]
        return reply.token

    async def generate(
        self,
        prompt: list[int],
        max_tokens: int,
        eos_ids: Iterable[int] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> AsyncIterator[int]:
        """Stream the tokens of a completion of `prompt`: until an EOS id is drawn (it is
        not yielded, as the whole-model engine does not stream it) or for `max_tokens`."""
        eos = set(eos_ids)
        rows = np.asarray(prompt, dtype=np.int64)
        for position in range(max_tokens):
            token = await self.step(rows, Draw(position, temperature, top_p, seed))
            if token in eos:
                return
            self.tokens.append(token)
            yield token
            rows = np.asarray([token], dtype=np.int64)

    async def close(self) -> None:
        """Tell every stage of the chain to forget the session (best effort)."""
        for hop in self.hops:
            offer, url = hop.offer, hop.offer.url.rstrip("/") + CLOSE_PATH
            with contextlib.suppress(httpx.HTTPError):
                if offer.x25519 is not None and offer.provider is not None:  # sealed, as its calls are
                    body = seal_close(self.session, offer.x25519, offer.provider)
                    await self.client.post(url, content=body, headers={"content-type": MEDIA_TYPE})
                else:
                    await self.client.post(url, json={"session": self.session})


class StageVouchers:
    """The payer's side of paying stages: one channel per stage provider, one cumulative
    voucher per (channel, stage id), so each stage is paid through its own channel at its
    own offer and `Channels` pays the stage's royalty (the base model's) on every redeem.

    `pay` adds what a finished session owes each stage (its checked receipts' amounts) and
    signs the new cumulative vouchers. The cumulative amounts live in memory here; the
    gateway's payment store is where they belong once stages are served through it."""

    def __init__(self, payer_key: bytes, domain: Domain, channels: dict[str, bytes]) -> None:
        self.payer_key = payer_key
        self.domain = domain  # the Channels contract's EIP-712 domain
        self.channels = {to_checksum_address(p): c for p, c in channels.items()}  # provider -> channel id
        self.cumulative: dict[tuple[bytes, bytes], int] = {}  # (channel, stage id) -> signed so far

    def pay(self, owed_by_stage: dict[tuple[str, bytes], int]) -> list[SignedVoucher]:
        vouchers = []
        for (provider, stage_id), amount in sorted(owed_by_stage.items()):
            if amount <= 0:
                continue
            channel = self.channels.get(to_checksum_address(provider))
            if channel is None:
                raise NoStageProvider(f"no channel to stage provider {provider}")
            key = (channel, stage_id)
            self.cumulative[key] = self.cumulative.get(key, 0) + amount
            vouchers.append(sign_voucher(Voucher(channel, stage_id, self.cumulative[key]), self.domain, self.payer_key))
        return vouchers
