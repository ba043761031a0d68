"""Which providers serve which models: read from Registry, checked against /v1/info.

A provider is used only if it is active on chain (stake, not paused), its /v1/info is
signed by its registered address, and the info's X25519 key and prices equal what
Registry holds. The directory is rebuilt when Registry or Models emits events (new
offers, stakes, slashes, names) and health-checked every `health_interval` seconds.

Model names come from the chain only: the name a model's owner set in `Models`. The
name a provider publishes in /v1/info (a folder path, or another model's name) names
nothing. A model without a name on chain is listed and asked for by its id ("0x…"). Two
model ids whose names read alike (`allmende.core.model_names`) cannot both hold them on
chain; should the directory still see that, it lists both by id and refuses the name.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import httpx

from allmende.api.client import ProviderInfo, fetch_info
from allmende.chain import Contracts
from allmende.chain.errors import ChainError
from allmende.core.errors import InvalidModelName, InvalidSignature
from allmende.core.model_names import canonical_name, is_model_id, skeleton
from allmende.core.routing import ProviderStats, consensus_reputation

log = logging.getLogger("allmende.directory")
REFERENCE_TOKENS = (1_000, 200)  # (in, out): the request whose price routing compares


@dataclass(frozen=True)
class Offer:
    model_id: bytes
    name: str  # the model's name on chain, or "0x" + its id when it has none
    kind: str  # "generate" | "embed"
    price_in: int
    price_out: int
    context_length: int


@dataclass
class ProviderEntry:
    address: str
    url: str
    info: ProviderInfo
    stake: int
    offers: dict[bytes, Offer]
    stats: dict[bytes, ProviderStats] = field(default_factory=dict)  # per model


@dataclass(frozen=True)
class ModelListing:
    model_id: bytes
    name: str
    kind: str
    providers: int
    min_price_in: int
    min_price_out: int
    owner: str | None
    registered_at: int = 0  # the block time of its registration in Models (0: not registered)


class AmbiguousName(Exception):
    """A name that more than one model id claims; carries those ids."""

    def __init__(self, name: str, model_ids: list[bytes]) -> None:
        super().__init__(name)
        self.name, self.model_ids = name, model_ids


def id_name(model_id: bytes) -> str:
    """How a model without a name on chain is listed and asked for."""
    return "0x" + model_id.hex()


class Directory:
    def __init__(self, contracts: Contracts, http: httpx.Client, health_interval: float = 30.0) -> None:
        self.contracts = contracts
        self.http = http
        self.health_interval = health_interval
        self._lock = threading.Lock()
        self._entries: dict[str, ProviderEntry] = {}
        self._last_block = -1
        self._last_full = 0.0
        self._owners: dict[bytes, str | None] = {}
        self._registered_at: dict[bytes, int] = {}  # block time of each served model's registration
        self._scored: set[str] = set()  # providers some active validator has published a score of
        self._by_name: dict[str, bytes] = {}  # canonical name -> model id
        self._ambiguous: dict[str, list[bytes]] = {}  # skeleton -> the model ids claiming it

    # ---------------------------------------------------------------- build

    def refresh(self) -> None:
        """Rebuild from chain and /v1/info. Keeps observed stats of providers that stay."""
        registry = self.contracts.registry
        fresh: dict[str, ProviderEntry] = {}
        names: dict[bytes, str] = {}
        for address in registry.all_accounts():
            account = registry.account(address)
            if account.role != 1 or not registry.is_active(address):
                continue
            chain_offers = {}
            for model_id in registry.models_of(address):
                offer = registry.offer(address, model_id)
                if offer.active:
                    chain_offers[model_id] = offer
            if not chain_offers:
                continue
            for model_id in chain_offers:
                if model_id not in names:
                    names[model_id] = self.contracts.models.name_of(model_id) or id_name(model_id)
            entry = self._check(address, account.endpoint, account.x25519_key, account.stake, chain_offers, names)
            if entry is None:
                continue
            old = self._entries.get(address)
            if old is not None:
                entry.stats = {m: s for m, s in old.stats.items() if m in entry.offers}
            for model_id, listed in entry.offers.items():
                price = -(-(REFERENCE_TOKENS[0] * listed.price_in + REFERENCE_TOKENS[1] * listed.price_out) // 10**6)
                stats = entry.stats.setdefault(model_id, ProviderStats(address, price))
                stats.price, stats.stake = price, entry.stake
                stats.capacity = int(entry.info.raw.get("load", {}).get("max_in_flight", 8))
            fresh[address] = entry
        reputations = self._reputations(list(fresh))
        for address, entry in fresh.items():
            for stats in entry.stats.values():
                stats.reputation = reputations.get(address, 0.5)
        # read again on every refresh (a Models event triggers one): a model registered or
        # transferred after it was first served shows its owner at once
        self._owners = {m: self.contracts.models.owner_of(m) for m in {m for e in fresh.values() for m in e.offers}}
        self._registered_at = {
            m: self.contracts.models.royalty_terms(m)[2] for m, owner in self._owners.items() if owner is not None
        }
        self.install(list(fresh.values()))

    def install(self, entries: list[ProviderEntry]) -> None:
        """Make `entries` the providers in use (refresh builds them from chain; unit tests inject
        them). Offers named by a name that is not canonical, or that reads like another model's
        name, are renamed to their ids."""
        claims: dict[str, set[bytes]] = {}  # skeleton -> model ids
        names: dict[bytes, str] = {}
        for entry in entries:
            for model_id, offer in entry.offers.items():
                name = names.setdefault(model_id, offer.name)
                if not is_model_id(name) and _is_canonical(name):
                    claims.setdefault(skeleton(name), set()).add(model_id)
        by_name: dict[str, bytes] = {}
        ambiguous: dict[str, list[bytes]] = {}
        for key, model_ids in claims.items():
            if len(model_ids) == 1:
                model_id = next(iter(model_ids))
                by_name[names[model_id]] = model_id
            else:
                ambiguous[key] = sorted(model_ids)
                log.warning("model name %r claimed by %d model ids; listed by id only", key, len(model_ids))
        listed = {model_id: name for name, model_id in by_name.items()}
        for entry in entries:
            for model_id, offer in entry.offers.items():
                name = listed.get(model_id, id_name(model_id))
                if offer.name != name:
                    entry.offers[model_id] = replace(offer, name=name)
        with self._lock:
            self._entries = {e.address: e for e in entries}
            self._by_name, self._ambiguous = by_name, ambiguous
        self._last_full = time.monotonic()

    def _reputations(self, providers: list[str]) -> dict[str, float]:
        """Stake-weighted, clipped consensus of the scores active validators published."""
        registry, verdicts = self.contracts.registry, self.contracts.verdicts
        validators = [
            (a, registry.stake_of(a))
            for a in registry.all_accounts()
            if registry.role_of(a) == 2 and registry.is_active(a)
        ]
        result, scored = {}, set()
        for provider in providers:
            scores = []
            for validator, stake in validators:
                score, at = verdicts.score(validator, provider)
                if at:
                    scores.append((score, stake))
            result[provider] = consensus_reputation(scores)
            if scores:
                scored.add(provider)
        self._scored = scored
        return result

    def audited(self, address: str) -> bool:
        """Whether an active validator has published a score of this provider: without one its
        reputation is the neutral 0.5, which means "not audited yet", not "half failed"."""
        return address in self._scored

    def _check(
        self,
        address: str,
        url: str,
        key: bytes,
        stake: int,
        chain_offers: dict,  # type: ignore[type-arg]
        names: dict[bytes, str],
    ) -> ProviderEntry | None:
        try:
            info = fetch_info(self.http, url.rstrip("/"))
        except (httpx.HTTPError, InvalidSignature, ValueError, KeyError) as exc:
            log.info("provider %s at %s unusable: %s", address, url, exc)
            return None
        if info.address != address or info.x25519_key != key:
            log.warning("provider %s: /v1/info disagrees with the chain (address or key); not used", address)
            return None
        offers: dict[bytes, Offer] = {}
        for model in info.models:
            model_id = bytes.fromhex(model["model_id"][2:])
            chain = chain_offers.get(model_id)
            if chain is None:
                continue
            if (int(model["price_in"]), int(model["price_out"])) != (chain.price_in, chain.price_out):
                log.warning("provider %s: prices in /v1/info differ from its offer on chain; not used", address)
                return None
            # the name comes from Models, not from what the provider calls the model
            offers[model_id] = Offer(
                model_id, names[model_id], model["kind"], chain.price_in, chain.price_out, int(model["context_length"])
            )
        if not offers:
            return None
        return ProviderEntry(address, url.rstrip("/"), info, stake, offers)

    def maybe_refresh(self) -> None:
        """Refresh if Registry emitted events since the last look, or the health interval passed."""
        try:
            block = self.contracts.client.block_number()
            changed = False
            if block > self._last_block:
                # from the deployment block on the first look (never 0), paged as the node allows
                query = {"address": [self.contracts.registry.address, self.contracts.models.address]}
                start = max(self._last_block + 1, self.contracts.deployment.deploy_block)
                logs = next(iter(self.contracts.client.logs(query, start, block)), None)
                changed = logs is not None or self._last_block < 0
                self._last_block = block
            if changed or time.monotonic() - self._last_full > self.health_interval:
                self.refresh()
        except ChainError as exc:
            log.warning("directory refresh deferred: %s", exc)

    # --------------------------------------------------------------- queries

    def entries(self) -> list[ProviderEntry]:
        with self._lock:
            return list(self._entries.values())

    def entry(self, address: str) -> ProviderEntry | None:
        with self._lock:
            return self._entries.get(address)

    def resolve(self, name: str) -> Offer | None:
        """A served model by its name on chain (any case) or by its id ("0x…"); None if no
        provider serves it. Raises `InvalidModelName` for what cannot be a name, and
        `AmbiguousName` for a name more than one model id claims."""
        if is_model_id(name):
            model_id = bytes.fromhex(name[2:])
        else:
            canonical = canonical_name(name)
            with self._lock:
                claimants = self._ambiguous.get(skeleton(canonical))
                found = self._by_name.get(canonical)
            if claimants:
                raise AmbiguousName(canonical, claimants)
            if found is None:
                return None
            model_id = found
        for entry in self.entries():
            offer = entry.offers.get(model_id)
            if offer is not None:
                return offer
        return None

    def candidates(self, model_id: bytes) -> list[ProviderEntry]:
        return [e for e in self.entries() if model_id in e.offers]

    def listings(self) -> list[ModelListing]:
        by_model: dict[bytes, list[Offer]] = {}
        for entry in self.entries():
            for offer in entry.offers.values():
                if offer.kind != "stage":  # a pipeline stage is listed as no model (gateway/staged.py)
                    by_model.setdefault(offer.model_id, []).append(offer)
        return [
            ModelListing(
                model_id,
                offers[0].name,
                offers[0].kind,
                len(offers),
                min(o.price_in for o in offers),
                min(o.price_out for o in offers),
                self._owners.get(model_id),
                self._registered_at.get(model_id, 0),
            )
            for model_id, offers in sorted(by_model.items(), key=lambda kv: kv[1][0].name)
        ]


def _is_canonical(name: str) -> bool:
    try:
        return canonical_name(name) == name
    except InvalidModelName:
        return False
