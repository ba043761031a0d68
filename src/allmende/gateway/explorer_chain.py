"""Read-only views of the chain for the explorer: one method per page, each returning
plain JSON (amounts as decimal strings of integer base units, never floats).

Every call is a handful of `eth_call`s; the explorer runs them in a thread and caches
each view for `ttl` seconds, so a page polled by many browsers costs the chain little.
Event logs (channels opened, redeems, votes) are read incrementally: each poll fetches
only the blocks since the last one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from allmende.api.directory import Directory
from allmende.chain import Contracts
from allmende.chain.bindings import PROPOSAL_STATES, ROLE_PROVIDER, ROLE_VALIDATOR, TEMPLATES
from allmende.chain.calls import decode_call
from allmende.chain.royalties import RoyaltyHistory, royalty_history
from allmende.core.errors import InvalidInput
from allmende.core.routing import consensus_reputation
from allmende.gateway.explorer_stats import Throughput, Uptime
from allmende.payer.payments import Payments

CASE_STATES = {1: "open", 2: "guilty", 3: "not guilty", 4: "no quorum"}
TEMPLATE_NAMES = {v: k for k, v in TEMPLATES.items()}


def hx(value: bytes) -> str:
    return "0x" + bytes(value).hex()


class EventTail:
    """All logs of one event since deployment, fetched a block range at a time."""

    def __init__(self, contracts: Contracts, contract: Any, event: str) -> None:
        self.client = contracts.client
        self.contract = contract
        self.event = event
        self.next_block = contracts.deployment.deploy_block
        self.logs: list[Any] = []

    def poll(self, head: int) -> list[Any]:
        if head >= self.next_block:
            self.logs.extend(self.client.events(self.contract, self.event, self.next_block, head))
            self.next_block = head + 1
        return self.logs


class ChainView:
    def __init__(
        self,
        contracts: Contracts,
        directory: Directory,
        payments: Payments,
        ttl: float = 2.0,
        throughput: Throughput | None = None,
        uptime: Uptime | None = None,
    ) -> None:
        self.contracts = contracts
        self.directory = directory
        self.payments = payments
        self.ttl = ttl
        self.throughput = throughput or Throughput()  # what this gateway saw each provider serve
        self.uptime = uptime or Uptime()  # what its health checks saw
        self._cache: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        c = contracts
        self._opened = EventTail(c, c.channels.contract, "ChannelOpened")
        self._redeemed = EventTail(c, c.channels.contract, "Redeemed")
        self._voted = EventTail(c, c.verdicts.contract, "Voted")
        self._gov_votes = EventTail(c, c.governor.contract, "VoteCast")
        self._redeemed_models: set[bytes] = set()  # models with a redeem seen so far
        self._channel_parties: dict[bytes, tuple[str, str]] = {}  # channel -> (payer, provider)
        self._decimals: dict[str, int] = {}

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """`build()` at most once per `ttl` seconds per key; concurrent callers share one build."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.ttl:
                return hit[1]
            value = build()
            self._cache[key] = (time.monotonic(), value)
            return value

    # --------------------------------------------------------------- helpers

    def _head(self) -> tuple[int, int]:
        client = self.contracts.client
        block = client.rpc(lambda: client.w3.eth.get_block("latest"))
        return int(block["number"]), int(block["timestamp"])

    def head(self) -> dict[str, int]:
        """The chain's height and time, and its id: every view carries it (`chain_head`)."""
        block, now = self._head()
        return {"block": block, "time": now, "chain_id": self.contracts.deployment.chain_id}

    def units(self) -> dict[str, Any]:
        if not self._decimals:
            for name, binding in (("usd", self.contracts.stable), ("alm", self.contracts.token)):
                self._decimals[name] = int(binding.client.call(binding.contract.functions.decimals()))
        return {
            "usd": {"symbol": "dUSD", "decimals": self._decimals["usd"]},
            "alm": {"symbol": "ALM", "decimals": self._decimals["alm"]},
        }

    def _names(self) -> dict[bytes, str]:
        """Model names as the providers the gateway uses publish them."""
        return {m.model_id: m.name for m in self.directory.listings()}

    def _reputation(self, validators: list[tuple[str, int]], provider: str) -> dict[str, Any]:
        scores: list[tuple[int, int]] = []
        detail: list[dict[str, Any]] = []
        for validator, stake in validators:
            score, at = self.contracts.verdicts.score(validator, provider)
            if at:
                scores.append((score, stake))
                detail.append({"validator": validator, "score_bps": score, "at": at})
        return {"value": consensus_reputation(scores), "scores": detail}

    def _pending(self) -> dict[str, int]:
        """Per provider, what this gateway's receipts owe it beyond what it redeemed."""
        store, owed = self.payments.store, dict[str, int]()
        for provider, cid, _ in store.all_channels():
            due = max(0, store.total_owed(cid) - self.contracts.channels.channel(cid).spent)
            owed[provider] = owed.get(provider, 0) + due
        return owed

    def _histories(self, head: int) -> dict[bytes, RoyaltyHistory]:
        """Every redeemed model's redeems as Channels split them (chain.royalties: the one read)."""
        for event in self._redeemed.poll(head):
            self._redeemed_models.add(bytes(event["args"]["model_id"]))
        return {m: royalty_history(self.contracts, m) for m in sorted(self._redeemed_models)}

    def _providers_of_channels(self, head: int) -> dict[bytes, tuple[str, str]]:
        """channel id -> (payer, provider), from the channels opened so far."""
        known = self._channel_parties
        for event in self._opened.poll(head):
            cid = bytes(event["args"]["channel_id"])
            if cid not in known:
                state = self.contracts.channels.channel(cid)
                known[cid] = (state.payer, state.provider)
        return known

    def _earned_series(self, head: int, histories: dict[bytes, RoyaltyHistory]) -> dict[str, list[dict[str, Any]]]:
        """Per provider, its share of every redeem (amount less royalty and protocol fee, as
        Channels credited it) summed over time: [{t, earned}] with `earned` cumulative."""
        parties = self._providers_of_channels(head)
        paid = sorted(
            (p.at, parties.get(p.channel_id, ("", ""))[1], p.amount - p.royalty - p.fee)
            for h in histories.values()
            for p in h.paid
        )
        series: dict[str, list[dict[str, Any]]] = {}
        totals: dict[str, int] = {}
        for at, provider, share in paid:
            totals[provider] = totals.get(provider, 0) + share
            series.setdefault(provider, []).append({"t": at, "earned": str(totals[provider])})
        return series

    # --------------------------------------------------------------- network

    def network(self) -> dict[str, Any]:
        registry = self.contracts.registry
        head, now = self._head()
        pending = self._pending()
        accounts = [(a, registry.account(a)) for a in registry.all_accounts()]
        validators = [(a, acc.stake) for a, acc in accounts if acc.role == ROLE_VALIDATOR and registry.is_active(a)]
        names = self._names()
        served = {e.address: e for e in self.directory.entries()}
        cases = self.contracts.verdicts.all_cases()
        providers: list[dict[str, Any]] = []
        validator_rows: list[dict[str, Any]] = []
        for address, acc in accounts:
            active = registry.is_active(address)
            if acc.role == ROLE_PROVIDER:
                entry = served.get(address)
                offers: list[dict[str, Any]] = []
                for model_id in registry.models_of(address):
                    offer = registry.offer(address, model_id)
                    if not offer.active:
                        continue
                    stats = entry.stats.get(model_id) if entry else None
                    offers.append(
                        {
                            "model_id": hx(model_id),
                            "name": (entry.offers[model_id].name if entry and model_id in entry.offers else None)
                            or names.get(model_id),
                            "price_in_per_1m": str(offer.price_in),
                            "price_out_per_1m": str(offer.price_out),
                            "latency_ms": round(stats.latency_ewma * 1000, 1)
                            if stats and stats.latency_ewma is not None
                            else None,
                            "in_flight": stats.in_flight if stats else 0,
                        }
                    )
                if entry is not None:
                    suspended = any(s.suspended_until > time.monotonic() for s in entry.stats.values())
                    health = "suspended" if suspended else "healthy"
                elif not active:
                    health = "paused" if acc.paused else "inactive"
                elif not offers or not acc.endpoint:
                    health = "stopped"  # it withdrew its offers (or endpoint) as a clean stop does
                else:
                    health = "unreachable"  # active on chain, but its signed /v1/info does not check out
                raw = entry.info.raw if entry is not None else {}
                load: dict[str, Any] = raw["load"] if isinstance(raw.get("load"), dict) else {}
                providers.append(
                    {
                        "address": address,
                        "endpoint": acc.endpoint,
                        "connection": "relay" if "/v1/relay/" in acc.endpoint else "direct",
                        "stake": str(acc.stake),
                        "unbonding": str(acc.unbonding),
                        "active": active,
                        "paused": acc.paused,
                        "health": health,
                        "offers": offers,
                        "reputation": self._reputation(validators, address),
                        "earnings": str(self.contracts.channels.earnings(address)),
                        # what this gateway's receipts owe it and it has not redeemed yet
                        "pending": str(pending.get(address, 0)),
                        "cases": sum(1 for c in cases if c.provider == address),
                        "registered_at": acc.registered_at,
                        # from its signed /v1/info, while it serves
                        "version": raw.get("version") if entry is not None else None,
                        "capacity": {"in_flight": load.get("in_flight"), "max_in_flight": load.get("max_in_flight")}
                        if entry is not None
                        else None,
                        "throughput": self.throughput.of(address),
                        "uptime": self.uptime.of(address),
                    }
                )
            elif acc.role == ROLE_VALIDATOR:
                validator_rows.append(
                    {
                        "address": address,
                        "endpoint": acc.endpoint,
                        "stake": str(acc.stake),
                        "active": active,
                        "cases_reported": sum(1 for c in cases if c.reporter == address),
                    }
                )
        totals = {
            "providers": len(providers),
            "providers_serving": len(served),
            "validators": len(validator_rows),
            "provider_stake": str(registry.role_stake(ROLE_PROVIDER)),
            "validator_stake": str(registry.role_stake(ROLE_VALIDATOR)),
            "models_served": len(names),
            "models_registered": len(self.contracts.models.all_ids()),
            "open_cases": sum(1 for c in cases if c.status == 1),
        }
        chain = {"block": head, "time": now, "chain_id": self.contracts.deployment.chain_id}
        return {
            "chain_time": now,
            "chain": chain,
            "providers": providers,
            "validators": validator_rows,
            "totals": totals,
        }

    # ---------------------------------------------------------------- models

    def models(self) -> dict[str, Any]:
        models, data = self.contracts.models, self.contracts.data
        names = self._names()
        serving: dict[bytes, int] = {}
        for entry in self.directory.entries():
            for model_id in entry.offers:
                serving[model_id] = serving.get(model_id, 0) + 1
        listed = {m.model_id: m for m in self.directory.listings()}
        context: dict[bytes, int] = {}  # as the serving providers' signed /v1/info give it
        for entry in self.directory.entries():
            for served in entry.info.models:
                try:
                    context[bytes.fromhex(str(served["model_id"])[2:])] = int(served["context_length"])
                except (KeyError, TypeError, ValueError):
                    continue
        rows: list[dict[str, Any]] = []
        for model_id in models.all_ids():
            record = models.get(model_id)
            payee, bps = models.royalty_info(model_id)
            listing = listed.get(model_id)
            rows.append(
                {
                    "model_id": hx(model_id),
                    "name": names.get(model_id),
                    "kind": listing.kind if listing else None,
                    "context_length": context.get(model_id),
                    "min_price_in_per_1m": str(listing.min_price_in) if listing else None,
                    "min_price_out_per_1m": str(listing.min_price_out) if listing else None,
                    "owner": record.owner,
                    "license": record.license,
                    "royalty_bps": record.royalty_bps,
                    "royalty_payee": payee,
                    "royalty_payee_bps": bps,
                    "parents": [hx(p) for p in record.parents],
                    "datasets": [hx(d) for d in record.datasets],
                    "metadata_uri": record.metadata_uri,
                    "registered_at": record.registered_at,
                    "providers": serving.get(model_id, 0),
                    "attestations": [
                        {
                            "validator": a.validator,
                            "job_id": hx(a.job_id),
                            "metric": a.metric,
                            "value_ppm": a.value_ppm,
                            "report_hash": hx(a.report_hash),
                            "at": a.at,
                        }
                        for a in data.attestations(model_id)
                    ],
                }
            )
        edges = [{"from": p, "to": m["model_id"]} for m in rows for p in m["parents"]]
        return {"models": rows, "lineage": edges}

    # ----------------------------------------------------------------- money

    def money(self) -> dict[str, Any]:
        channels, store = self.contracts.channels, self.payments.store
        head, now = self._head()
        mine = {bytes(cid): provider for provider, cid, _ in store.all_channels()}
        rows: list[dict[str, Any]] = []
        for event in self._opened.poll(head):
            cid = bytes(event["args"]["channel_id"])
            state = channels.channel(cid)
            owed = store.total_owed(cid) if cid in mine else None
            rows.append(
                {
                    "channel_id": hx(cid),
                    "payer": state.payer,
                    "provider": state.provider,
                    "deposit": str(state.deposit),
                    "redeemed": str(state.spent),
                    # what this gateway's receipts say is owed and the provider has not redeemed yet
                    "pending": None if owed is None else str(max(0, owed - state.spent)),
                    "owed": None if owed is None else str(owed),
                    "closes_at": state.closes_at,
                    "this_gateway": cid in mine,
                }
            )
        # what Channels paid, by the contract's own rule (chain.royalties, as `status` and
        # `models earnings` read it): cumulative rounding, and no royalty on service before a
        # model's registration (each redeem alone, rounded, showed royalties never paid)
        histories = self._histories(head)
        royalties = [{"model_id": hx(m), "payee": h.payee, "royalties": str(h.royalties)} for m, h in histories.items()]
        fees = sum(h.fees for h in histories.values())
        redeemed = sum(h.redeemed for h in histories.values())
        treasury = channels.treasury()
        return {
            "chain_time": now,
            "channels": rows,
            "totals": {
                "deposits": str(sum(int(r["deposit"]) for r in rows)),
                "redeemed": str(redeemed),
                "pending": str(sum(int(r["pending"]) for r in rows if r["pending"] is not None)),
                "royalties_paid": str(sum(h.royalties for h in histories.values())),
                "protocol_fees_paid": str(fees),
            },
            "royalties": royalties,
            "earned_over_time": self._earned_series(head, histories),
            "treasury": {
                "address": treasury,
                "accrued_fees": str(channels.earnings(treasury)),
                "alm_balance": str(self.contracts.token.balance_of(treasury)),
                "usd_balance": str(self.contracts.stable.balance_of(treasury)),
                "timelock_alm": str(self.contracts.token.balance_of(self.contracts.deployment.address("Timelock"))),
            },
        }

    # ----------------------------------------------------------------- trust

    def trust(self) -> dict[str, Any]:
        head, now = self._head()
        votes: dict[int, list[dict[str, Any]]] = {}
        for event in self._voted.poll(head):
            args = event["args"]
            votes.setdefault(int(args["case_id"]), []).append(
                {"validator": args["validator"], "guilty": bool(args["guilty"]), "weight": str(args["weight"])}
            )
        cases = [
            {
                "case_id": c.case_id,
                "provider": c.provider,
                "reporter": c.reporter,
                "model_id": hx(c.model_id),
                "state": CASE_STATES.get(c.status, "unknown"),
                "verdict": None if c.status == 1 else CASE_STATES.get(c.status, "unknown"),
                "guilty_weight": str(c.guilty_weight),
                "innocent_weight": str(c.innocent_weight),
                "votes": votes.get(c.case_id, []),
                "deadline": c.deadline,
                "slashed": str(c.slashed),
                "evidence_uri": c.evidence_uri,
            }
            for c in self.contracts.verdicts.all_cases()
        ]
        gov_votes: dict[int, int] = {}
        for event in self._gov_votes.poll(head):
            pid = int(event["args"]["proposal_id"])
            gov_votes[pid] = gov_votes.get(pid, 0) + 1
        proposals: list[dict[str, Any]] = []
        governor = self.contracts.governor
        for pid in governor.ids():
            p = governor.proposal(pid)
            if p.executed:
                timelock = "executed"
            elif p.canceled or p.state == "expired":
                timelock = p.state  # a queued proposal past its window is dead, not "ready"
            elif p.queued:
                timelock = "ready" if now >= p.eta else "waiting"
            else:
                timelock = "not queued"
            proposals.append(
                {
                    "proposal_id": str(pid),
                    "proposer": p.proposer,
                    "description": p.description,
                    # what executes, decoded from chain: a description can say anything
                    "calls": [decode_call(self.contracts.deployment, *call).short() for call in governor.calls(pid)],
                    "state": p.state,
                    "for": str(p.for_votes),
                    "against": str(p.against_votes),
                    "abstain": str(p.abstain_votes),
                    "voters": gov_votes.get(pid, 0),
                    "quorum": str(p.quorum),
                    "start": p.start,
                    "end": p.end,
                    "eta": p.eta,
                    "timelock": timelock,
                }
            )
        return {"chain_time": now, "cases": cases, "proposals": proposals, "proposal_states": list(PROPOSAL_STATES)}

    # ------------------------------------------------------------------ data

    def data(self) -> dict[str, Any]:
        data = self.contracts.data
        _, now = self._head()
        datasets: list[dict[str, Any]] = []
        log: list[dict[str, Any]] = []
        for dataset_id in data.dataset_ids():
            d = data.dataset(dataset_id)
            datasets.append(
                {
                    "dataset_id": hx(dataset_id),
                    "owner": d.owner,
                    "vault": d.vault,
                    "license": d.license,
                    "policy_uri": d.policy_uri,
                    "registered_at": d.registered_at,
                    "accesses": d.accesses,
                }
            )
            for a in data.accesses(dataset_id):
                log.append(
                    {
                        "dataset_id": hx(dataset_id),
                        "grant_id": a.grant_id,
                        "job_id": hx(a.job_id),
                        "model_id": hx(a.model_id),
                        "result_hash": hx(a.result_hash),
                        "epsilon_ppm": str(a.epsilon_spent),
                        "at": a.at,
                    }
                )
        grants: list[dict[str, Any]] = []
        for grant_id in range(1, data.grant_count() + 1):
            g = data.get_grant(grant_id)
            grants.append(
                {
                    "grant_id": grant_id,
                    "dataset_id": hx(g.dataset_id),
                    "grantee": g.grantee,
                    "template": TEMPLATE_NAMES.get(g.template, str(g.template)),
                    "models": [hx(m) for m in g.model_ids],
                    "expires_at": g.expires_at,
                    "expired": g.expires_at <= now,
                    "epsilon_budget_ppm": str(g.epsilon_budget),
                    "epsilon_spent_ppm": str(g.epsilon_spent),
                    "revoked": g.revoked,
                }
            )
        log.sort(key=lambda a: a["at"], reverse=True)
        return {"chain_time": now, "datasets": datasets, "grants": grants, "access_log": log}

    # --------------------------------------------------------------- address

    def address(self, who: str) -> dict[str, Any]:
        """Everything the chain and this gateway know about one address: its role and stake,
        balances, what it earned (and when), its channels, fraud cases, models and grants."""
        from eth_utils import is_address, to_checksum_address

        if not is_address(who):
            raise InvalidInput(f"{who[:60]!r} is not an address (0x followed by 40 hex digits)")
        who = to_checksum_address(who)
        c, client = self.contracts, self.contracts.client
        head, now = self._head()
        acc = c.registry.account(who)
        parties = self._providers_of_channels(head)
        channels: list[dict[str, Any]] = []
        for cid, (payer, provider) in parties.items():
            if who not in (payer, provider):
                continue
            state = c.channels.channel(cid)
            channels.append(
                {"channel_id": hx(cid), "payer": payer, "provider": provider, "deposit": str(state.deposit),
                 "redeemed": str(state.spent), "closes_at": state.closes_at,
                 "as": "payer" if who == payer else "provider"}
            )  # fmt: skip
        histories = self._histories(head)
        offers: list[dict[str, Any]] = []
        if acc.role == ROLE_PROVIDER:
            names = self._names()
            for model_id in c.registry.models_of(who):
                offer = c.registry.offer(who, model_id)
                if offer.active:
                    offers.append(
                        {"model_id": hx(model_id), "name": names.get(model_id), "price_in_per_1m": str(offer.price_in),
                         "price_out_per_1m": str(offer.price_out)}
                    )  # fmt: skip
        owned = [hx(m) for m in c.models.all_ids() if c.models.get(m).owner == who]
        royalties = [{"model_id": hx(m), "royalties": str(h.royalties)} for m, h in histories.items() if h.payee == who]
        cases = [
            {"case_id": k.case_id, "provider": k.provider, "reporter": k.reporter,
             "state": CASE_STATES.get(k.status, "unknown"), "slashed": str(k.slashed)}
            for k in c.verdicts.all_cases()
            if who in (k.provider, k.reporter)
        ]  # fmt: skip
        roles = {ROLE_PROVIDER: "provider", ROLE_VALIDATOR: "validator"}
        return {
            "chain_time": now,
            "address": who,
            "role": roles.get(acc.role, "none"),
            "active": c.registry.is_active(who) if acc.role else False,
            "paused": acc.paused,
            "endpoint": acc.endpoint,
            "stake": str(acc.stake),
            "unbonding": str(acc.unbonding),
            "unbond_at": acc.unbond_at,
            "balances": {
                "eth": str(client.rpc(lambda: client.w3.eth.get_balance(who))),
                "alm": str(c.token.balance_of(who)),
                "usd": str(c.stable.balance_of(who)),
            },
            "withdrawable": str(c.channels.earnings(who)),  # provider share, royalties or fees accrued
            "pending": str(self._pending().get(who, 0)),
            "earned_over_time": self._earned_series(head, histories).get(who, []),
            "offers": offers,
            "channels": channels,
            "models_owned": owned,
            "royalties": royalties,
            "cases": cases,
            "rewards": str(c.verdicts.rewards_of(who)),
            "treasury": who == c.channels.treasury(),
        }
