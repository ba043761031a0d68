"""Chat completions of a model that no provider serves whole, through a chain of its
pipeline stages (`allmende gateway --stage-model M`, what `allmende up --stages N` starts).

The gateway holds the model's tokenizer only (no weights): it renders the conversation as
the whole-model engine does, sends the token ids through a `StageSession` (payer/stages.py:
a provider per stage, replaced and replayed when one fails) and turns the drawn tokens into
text with the engine's incremental detokenizer, so a greedy answer is the whole model's.

Which chain: the stages the model's owner registered on chain (`chain.stages`, each checked
against its id), the providers offering them as the directory found them (their signed
/v1/info lists a stage as a model of kind "stage", its offer on chain holds the prices),
the cheapest, then fastest, live provider per stage.

Privacy and payment per hop (`SessionPayer`), as for whole models: every call is sealed to
its stage provider's X25519 key (the one its signed /v1/info and the chain agree on). Before
a provider is first called (the chain's at the start, a replacement before its replay) it
gets a channel and the request's most cost at its offer is reserved on it against its
credit limit (`Payments.reserve`). Every call carries the payer's signature and the
cumulative voucher for (channel, stage id) of what is owed so far; the provider admits it
under its own credit rule (`provider.stage_app.serve_paid_call`). Every call's receipt is
checked against the call and the offer (`StageSession._check`: hashes, price, signer) and
recorded as owed at once (the next call's voucher covers it); when the session ends the last
cumulative vouchers go to the providers' `POST /v1/vouchers`, which they redeem like any.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx

from allmende.api.canonical import CanonicalRequest
from allmende.api.client import DEFAULT_CREDIT_LIMIT, Answer, Delta
from allmende.api.directory import Directory, ModelListing, Offer
from allmende.chain import Contracts
from allmende.chain.errors import ChainError
from allmende.chain.stages import covering_layouts, registered_stages
from allmende.core import Domain, InvalidInput
from allmende.core.credit import UNTIL_CONTEXT
from allmende.core.errors import InvalidModelName, UpstreamError
from allmende.core.model_names import canonical_name, is_model_id
from allmende.core.stages import StageLayout, StagePrice
from allmende.engine.base import ChatPrompt, SamplingParams
from allmende.engine.chat import render_chat, template_renders_tools
from allmende.gateway.errors import InvalidRequest, NoProvider
from allmende.payer.payments import Payments
from allmende.payer.stage_payer import SessionPayer
from allmende.payer.stages import Hop, NoStageProvider, StageOffer, StageRouter, StageSession

log = logging.getLogger("allmende.gateway.staged")
STAGE_KIND = "stage"  # how a provider's /v1/info lists a stage it serves
LAYOUT_TTL = 10.0  # seconds the layouts read from chain are reused
DEAD_FOR = 30.0  # seconds a stage provider that failed a call is left out of new chains


class ChatTokens:
    """A chat model's tokenizer, used as the whole-model engine uses it
    (`GenerativeEngine.prompt_ids`, `decode`): the same prompt ids, the same text."""

    def __init__(self, path: Any) -> None:
        from transformers import AutoConfig, AutoTokenizer  # the gateway imports no ML stack unless it serves stages

        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(path)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        eos = self.tokenizer.eos_token_id
        self.eos_ids = {int(eos)} if eos is not None else set()

    def prompt_ids(self, prompt: ChatPrompt) -> list[int]:
        if not prompt.messages:
            raise InvalidRequest("messages must be a non-empty list", "messages")
        clean, tools = render_chat(prompt, template_renders_tools(self.tokenizer.chat_template))
        rendered = self.tokenizer.apply_chat_template(clean, tools=tools, add_generation_prompt=True, tokenize=True)
        if isinstance(rendered, dict) or hasattr(rendered, "keys"):
            rendered = rendered["input_ids"]
        ids = [int(i) for i in rendered]
        if prompt.continuation:
            ids += [int(i) for i in self.tokenizer(prompt.continuation, add_special_tokens=False)["input_ids"]]
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


@dataclass
class StagedModel:
    base: bytes  # the whole model's id
    loaded_as: str  # what the gateway was told (--stage-model)
    tokens: ChatTokens


def refuse_unsupported(request: CanonicalRequest) -> None:
    """The request options a stage chain does not serve yet, refused by name (400), never ignored."""
    sampling: SamplingParams = request.generation[1]
    unsupported = {
        "n": request.n != 1,
        "stop": bool(sampling.stop),
        "logprobs": sampling.logprobs is not None,
        "response_format": sampling.grammar is not None,
        "tools": bool(request.body.get("tools")),
        "presence_penalty": sampling.presence_penalty != 0.0,
        "frequency_penalty": sampling.frequency_penalty != 0.0,
        "logit_bias": bool(sampling.logit_bias),
        "top_k": sampling.top_k != 0,
        "min_p": sampling.min_p != 0.0,
    }
    for name, used in unsupported.items():
        if used:
            raise InvalidRequest(f"'{name}' is not supported for a model served in pipeline stages", name)


class StagedModels:
    """The models this gateway serves through stage chains, and the serving itself."""

    def __init__(
        self,
        contracts: Contracts,
        directory: Directory,
        payments: Payments,
        http: httpx.AsyncClient,
        receipt_domain: Domain,
        models: list[tuple[str, bytes, Any]],  # (loaded as, model id, checkpoint folder)
        timeout: float = 60.0,
    ) -> None:
        self.contracts = contracts
        self.directory = directory
        self.payments = payments
        self.http = http
        self.domain = receipt_domain
        self.timeout = timeout
        self.models = {model_id: StagedModel(model_id, name, ChatTokens(path)) for name, model_id, path in models}
        self._names: dict[bytes, str | None] = {}
        self._layouts: dict[bytes, tuple[float, list[StageLayout]]] = {}
        self._offers: dict[tuple[str, bytes], StageOffer] = {}
        self._dead_since: dict[tuple[str, bytes], float] = {}
        self._ending: set[asyncio.Future[None]] = set()  # sessions being settled and closed

    @classmethod
    def load(
        cls,
        names: tuple[str, ...],
        contracts: Contracts,
        directory: Directory,
        payments: Payments,
        http: httpx.AsyncClient,
    ) -> StagedModels:
        """The models `names` (as `resolve_model` finds them: their tokenizers, no weights), served
        through stage chains paid from `payments`' key (a gateway's, or an agent's own)."""
        from allmende.engine import resolve_model

        models = []
        for name in names:
            resolved = resolve_model(name, progress=False)
            models.append((name, resolved.model_id, resolved.path))
        return cls(contracts, directory, payments, http, contracts.registry.receipt_domain(), models)

    def stage_ids(self, base: bytes) -> set[bytes]:
        """Every stage id registered for the whole model `base` (receipts name stages, not the
        model: what was spent on `base` is what was spent on these)."""
        if base not in self.models:
            return set()
        return {spec.stage_id for layout in self.layouts(base) for spec in layout.stages}

    # ---------------------------------------------------------------- which model, which chain

    def find(self, name: object) -> StagedModel | None:
        """The staged model `name` asks for: its id, or its name on chain (any case)."""
        if not isinstance(name, str) or not name:
            return None
        if is_model_id(name):
            return self.models.get(bytes.fromhex(name[2:]))
        try:
            wanted = canonical_name(name)
        except InvalidModelName:
            return None
        for model in self.models.values():
            if self._name_of(model.base) == wanted:
                return model
        return None

    def _name_of(self, base: bytes) -> str | None:
        if base not in self._names or self._names[base] is None:
            try:
                self._names[base] = self.contracts.models.name_of(base) or None
            except ChainError:
                return None
        return self._names[base]

    def offer_of(self, model: StagedModel) -> Offer:
        """The model as the gateway's other paths see an offer (name, kind, context)."""
        name = self._name_of(model.base) or "0x" + model.base.hex()
        return Offer(model.base, name, "generate", 0, 0, model.tokens.context_length)

    def listings(self) -> list[ModelListing]:
        """The staged models a live chain serves now, as /v1/models lists models. Prices per
        1M tokens: every token is a position at every stage, and a generated one is also drawn
        at the last (the cheapest chain's)."""
        listed = []
        for model in self.models.values():
            try:
                router = self.router(model)
                chain = router.chain()
                owner = self.contracts.models.owner_of(model.base)
                registered_at = self.contracts.models.royalty_terms(model.base)[2] if owner else 0
            except (NoProvider, ChainError):
                continue
            price = router.price(chain)
            providers = len({o.provider for offers in router.offers.values() for o in offers if not o.dead})
            listed.append(
                ModelListing(
                    model.base,
                    self.offer_of(model).name,
                    "generate",
                    providers,
                    price.per_position * 10**6,
                    (price.per_position + price.per_token) * 10**6,
                    owner,
                    registered_at,
                )
            )
        return listed

    def layouts(self, base: bytes) -> list[StageLayout]:
        """The chains of stages the model's owner registered on chain, shortest first (cached)."""
        now = time.monotonic()
        cached = self._layouts.get(base)
        if cached is not None and now - cached[0] < LAYOUT_TTL:
            return cached[1]
        try:
            found = covering_layouts(registered_stages(self.contracts, base))
        except (ChainError, InvalidInput) as exc:
            if cached is not None:
                return cached[1]
            raise NoProvider(f"the stages of 0x{base.hex()} could not be read from chain: {exc}") from None
        self._layouts[base] = (now, found)
        return found

    def router(self, model: StagedModel) -> StageRouter:
        """A router over the first registered layout every stage of which a live provider offers."""
        now = time.monotonic()
        for key, since in list(self._dead_since.items()):
            if now - since > DEAD_FOR and key in self._offers:
                self._offers[key].dead = False
                del self._dead_since[key]
        for layout in self.layouts(model.base):
            offers: list[StageOffer] = []
            for spec in layout.stages:
                for entry in self.directory.candidates(spec.stage_id):
                    listed = entry.offers[spec.stage_id]
                    if listed.kind != STAGE_KIND:
                        continue
                    key = (entry.address, spec.stage_id)
                    price = StagePrice(listed.price_in, listed.price_out)
                    offer = self._offers.get(key)
                    key_of = entry.info.x25519_key  # checked against the chain by the directory
                    if offer is None or offer.url != entry.url or offer.price != price or offer.x25519 != key_of:
                        offer = StageOffer(spec, entry.url, price, entry.address, key_of)
                        self._offers[key] = offer
                    offers.append(offer)
            router = StageRouter(layout, offers)
            try:
                router.chain()
            except NoStageProvider:
                continue
            return router
        raise NoProvider(f"no chain of live stage providers covers '{self.offer_of(model).name}' right now")

    def _credit_limit(self, provider: str) -> int:
        entry = self.directory.entry(provider)
        return entry.info.credit_limit if entry else DEFAULT_CREDIT_LIMIT

    def most_cost(self, model: StagedModel, request: CanonicalRequest) -> int:
        """The most a request can cost through the dearest chain: every position of prompt and
        answer at every stage, plus every token drawn."""
        prompt, max_tokens = self._prompt(model, request)
        positions = len(prompt) + max_tokens
        priciest = StagePrice()
        for layout in self.layouts(model.base):
            per_stage = []
            for spec in layout.stages:
                prices = [e.offers[spec.stage_id] for e in self.directory.candidates(spec.stage_id)]
                if prices:
                    per_stage.append(StagePrice(max(p.price_in for p in prices), max(p.price_out for p in prices)))
            total = StagePrice(sum(p.per_position for p in per_stage), sum(p.per_token for p in per_stage))
            if total.amount(positions, max_tokens) > priciest.amount(positions, max_tokens):
                priciest = total
        return priciest.amount(positions, max_tokens)

    # ------------------------------------------------------------------------ serving

    def _prompt(self, model: StagedModel, request: CanonicalRequest) -> tuple[list[int], int]:
        """The prompt's token ids and the most tokens the answer may have."""
        refuse_unsupported(request)
        prompt, sampling = request.generation
        assert isinstance(prompt, ChatPrompt)
        ids = model.tokens.prompt_ids(prompt)
        room = model.tokens.context_length - len(ids)
        if room < 1:
            error = InvalidRequest(
                f"the prompt has {len(ids)} tokens; the model's context is {model.tokens.context_length}", "messages"
            )
            error.code = "context_length_exceeded"
            raise error
        asked = sampling.max_tokens
        return ids, room if asked >= UNTIL_CONTEXT else min(asked, room)

    async def generate(
        self, model: StagedModel, request: CanonicalRequest, api_key: str | None
    ) -> AsyncGenerator[Delta | Answer, None]:
        """Text deltas (`Delta`), then the final `Answer` (usage, the chain's receipts)."""
        ids, max_tokens = self._prompt(model, request)
        sampling = request.generation[1]
        seed = sampling.seed if sampling.seed is not None else 0
        router = await asyncio.to_thread(self.router, model)  # reads the layout from chain now and then
        payer = SessionPayer(self.payments, self._credit_limit, len(ids) + max_tokens, max_tokens, api_key)
        session = StageSession(router, self.http, timeout=self.timeout, domain=self.domain, payer=payer)
        try:
            await session.reserve()
        except NoStageProvider as exc:
            payer.release()
            raise NoProvider(str(exc)) from None
        from allmende.engine.sampling import IncrementalDetokenizer  # torch: imported only when stages serve

        detokenizer = IncrementalDetokenizer(model.tokens.decode)
        pending = 0  # tokens drawn whose text is not out yet
        answer = ""  # the text streamed so far
        settled = False
        try:
            try:
                async for token in session.generate(
                    ids, max_tokens, model.tokens.eos_ids, sampling.temperature, sampling.top_p, seed
                ):
                    pending += 1
                    text = detokenizer.push(token)
                    if text:
                        answer += text
                        yield Delta(text, pending)
                        pending = 0
            except (NoStageProvider, UpstreamError) as exc:
                raise NoProvider(f"the stage chain of '{self.offer_of(model).name}' failed: {exc}") from None
            tail = detokenizer.flush()
            if tail or pending:
                answer += tail
                yield Delta(tail, pending)
            drawn = len(session.tokens)
            finish = "length" if drawn == max_tokens else "stop"
            settled = True  # (before the await: a client gone during it must not settle twice)
            await self._settle(session, payer)
            receipts = session.receipts
            if not receipts:
                raise NoProvider("the stage chain answered without receipts")
            output = {
                "text": answer,
                "finish_reason": finish,
                "token_ids": list(session.tokens),
                "proof": "0x",
                "stages": [hop_view(h) for h in session.hops],
                "receipts": [r.to_json() for r in receipts],
            }
            usage = {"prompt_tokens": len(ids), "completion_tokens": drawn, "total_tokens": len(ids) + drawn}
            yield Answer(output, usage, receipts[-1], request.body)
        finally:
            payer.release()
            for offers in session.router.offers.values():  # the hops' offers among them
                for offer in offers:
                    if offer.dead:
                        self._dead_since.setdefault((str(offer.provider), offer.stage.stage_id), time.monotonic())
            # A client that hangs up cancels this generator (Starlette cancels the response's task
            # group, and every await inside it is cancelled again): the settling and the closing of
            # the session run in a task of their own, or the stages kept the session's caches and
            # were never paid for the calls they answered.
            ending = asyncio.ensure_future(self._end(session, payer, settled))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
            await asyncio.shield(ending)

    async def _end(self, session: StageSession, payer: SessionPayer, settled: bool) -> None:
        """Deliver a session's last vouchers if its answer did not (a stream cut by its client or
        a failed chain: the calls answered are owed all the same), then close it at every stage."""
        if not settled:
            try:
                await self._settle(session, payer)
            except Exception as exc:  # the answer's own error, if any, is what the client hears
                log.warning("vouchers of an unfinished stage session not delivered: %s", exc)
        await session.close()

    async def _settle(self, session: StageSession, payer: SessionPayer) -> None:
        """The cumulative vouchers for what the session's calls left owed (each call carried
        the voucher for the calls before it), delivered to the providers (`POST /v1/vouchers`)."""
        for provider, vouchers in payer.last_vouchers().items():
            entry = self.directory.entry(provider)
            url = entry.url if entry else next((h.offer.url for h in session.hops if h.offer.provider == provider), "")
            if not url:
                continue
            try:
                reply = await self.http.post(f"{url}/v1/vouchers", json={"vouchers": [v.to_json() for v in vouchers]})
                reply.raise_for_status()
                for row in reply.json()["held"]:
                    self.payments.store.ack(
                        bytes.fromhex(row["channel_id"][2:]), bytes.fromhex(row["model_id"][2:]), int(row["cumulative"])
                    )
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                # carried by the next call on the channel, or delivered again, until acknowledged
                log.warning("vouchers for stage provider %s not delivered: %s", provider, exc)


def hop_view(hop: Hop) -> dict[str, Any]:
    """Which provider served a stage of the answer, and how often that stage was replaced."""
    return {
        "stage": hop.offer.stage.stage_id_hex,
        "provider": hop.offer.provider,
        "url": hop.offer.url,
        "replaced": hop.replaced,
    }
