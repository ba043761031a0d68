"""Typed bindings over the deployed contracts: one class per contract, methods in
the protocol's words, every revert raised as ContractReverted with its reason."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast

from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3.contract import Contract
from web3.exceptions import BadFunctionCallOutput
from web3.logs import DISCARD

from allmende.chain.client import ChainClient, SentTransaction
from allmende.chain.deployment import Deployment
from allmende.chain.errors import ContractReverted
from allmende.chain.sources import ZERO_ADDRESS
from allmende.core import Domain, SignedVoucher
from allmende.core.errors import AmountOverflow, InvalidInput, UnknownModel

ROLE_PROVIDER = 1
ROLE_VALIDATOR = 2
MAX_UINT = 2**256 - 1


def registration_commitment(item_id: bytes, owner: str, salt: bytes) -> bytes:
    """keccak256(abi_encode(id, owner, salt)): what `Models.commit` and `Data.commit` hide
    an id behind until it is registered in a later block."""
    return keccak(abi_encode(["bytes32", "address", "bytes32"], [item_id, owner, salt]))


def _commit_then(binding: _Binding, item_id: bytes, fn: str, *args: Any) -> SentTransaction:
    """Commit-reveal in two transactions: the commitment is mined first (its own block), so
    the reveal, which shows the id, cannot be front-run by a copier without a commitment."""
    salt = os.urandom(32)
    binding._tx("commit", registration_commitment(item_id, binding.client.address, salt))
    # estimated against the pending block: in the latest one the commitment is "too recent"
    return _checkpointed_tx(binding, fn, *args, salt)


def eip3009_supported(client: ChainClient, token: str, abi: list[dict[str, Any]]) -> bool:
    """Whether the ERC-20 at `token` answers EIP-3009 as USDC does (`authorizationState`, and
    `name()`/`version()` for its EIP-712 domain): what the x402 `exact` scheme settles with.
    `abi` is one that has those functions (MockStable's). A token without them reverts (or
    answers nothing) where the function is missing; a node that cannot be reached is still an
    error, not a "no"."""
    contract = client.contract(token, abi)
    try:
        client.call(contract.functions.authorizationState(ZERO_ADDRESS, bytes(32)))
        client.call(contract.functions.name())
        client.call(contract.functions.version())
    except (ContractReverted, BadFunctionCallOutput):
        return False
    return True


def _amount(value: int, what: str, bits: int = 256) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 1 << bits:
        raise AmountOverflow(f"{what} = {value!r} is not an integer in [0, 2**{bits})")
    return value


class _Binding:
    name = ""

    def __init__(self, client: ChainClient, deployment: Deployment) -> None:
        self.client = client
        self.address = deployment.address(self.name)
        self.contract: Contract = client.contract(self.address, deployment.abi(self.name))

    def _call(self, fn: str, *args: Any) -> Any:
        return self.client.call(getattr(self.contract.functions, fn)(*args))

    def _tx(self, fn: str, *args: Any) -> SentTransaction:
        return self.client.transact(getattr(self.contract.functions, fn)(*args))


class Token(_Binding):
    name = "AllmendeToken"

    def balance_of(self, who: str) -> int:
        return int(self._call("balanceOf", who))

    def transfer(self, to: str, amount: int) -> SentTransaction:
        return self._tx("transfer", to, _amount(amount, "amount"))

    def approve(self, spender: str, amount: int = MAX_UINT) -> SentTransaction:
        return self._tx("approve", spender, _amount(amount, "amount"))

    def allowance(self, owner: str, spender: str) -> int:
        return int(self._call("allowance", owner, spender))

    def ensure_allowance(self, spender: str, needed: int) -> None:
        if self.allowance(self.client.address, spender) < needed:
            self.approve(spender)


class Stable(Token):
    name = "MockStable"

    def mint(self, to: str, amount: int) -> SentTransaction:
        return self._tx("mint", to, _amount(amount, "amount"))

    # EIP-3009, as USDC has it: what the x402 `exact` scheme settles with

    def supports_eip3009(self) -> bool:
        """Whether this payment token has EIP-3009 (x402 payments need it; see eip3009_supported)."""
        return eip3009_supported(self.client, self.address, cast(list[dict[str, Any]], self.contract.abi))

    def eip712_domain(self) -> tuple[str, str]:
        """(name, version) of the token's EIP-712 domain, as x402 payment requirements name them."""
        return str(self._call("name")), str(self._call("version"))

    def authorization_used(self, payer: str, nonce: bytes) -> bool:
        """Whether `payer`'s EIP-3009 authorization with `nonce` was used."""
        return bool(self._call("authorizationState", payer, nonce))

    def transfer_with_authorization(
        self,
        payer: str,
        to: str,
        amount: int,
        valid_after: int,
        valid_before: int,
        nonce: bytes,
        signature: tuple[int, bytes, bytes],
    ) -> SentTransaction:
        """Submit `payer`'s signed TransferWithAuthorization (v, r, s); anyone may, once."""
        return self._tx(
            "transferWithAuthorization",
            payer,
            to,
            _amount(amount, "amount"),
            valid_after,
            valid_before,
            nonce,
            *signature,
        )


class Params(_Binding):
    name = "Params"

    def get(self, name: str) -> int:
        return int(self._call("get", name))

    def set(self, name: str, value: int) -> SentTransaction:
        return self._tx("set", name, _amount(value, name))

    def all(self) -> dict[str, int]:
        names = [self._call("names", i) for i in range(int(self._call("count")))]
        return {n: self.get(n) for n in names}

    def upper_bound(self, name: str) -> int:
        """The inclusive upper bound of a parameter; 0 when it has none."""
        return int(self._call("upper_bound", keccak(text=name)))

    def lower_bound(self, name: str) -> int:
        """The inclusive lower bound of a parameter; 0 when it has none."""
        return int(self._call("lower_bound", keccak(text=name)))

    def bounds(self) -> dict[str, tuple[int, int, int]]:
        """name -> (value, lower bound or 0, upper bound or 0), in the order the names were defined."""
        return {n: (v, self.lower_bound(n), self.upper_bound(n)) for n, v in self.all().items()}

    def check(self, name: str, value: int) -> None:
        """Raises ContractReverted with Params' reason if set(name, value) could not execute now."""
        self._call("check", name, _amount(value, name))


@dataclass(frozen=True)
class ModelRecord:
    model_id: bytes
    owner: str
    license: str
    royalty_bps: int
    parents: list[bytes]
    datasets: list[bytes]
    metadata_uri: str
    registered_at: int


class Models(_Binding):
    name = "Models"

    def register(
        self,
        model_id: bytes,
        license: str,
        royalty_bps: int,
        parents: list[bytes] | None = None,
        datasets: list[bytes] | None = None,
        metadata_uri: str = "",
    ) -> SentTransaction:
        """Register by commit-reveal (two transactions, `_commit_then`); returns the reveal."""
        return _commit_then(
            self, model_id, "register", model_id, license, royalty_bps, parents or [], datasets or [], metadata_uri
        )

    def owner_of(self, model_id: bytes) -> str | None:
        owner = str(self._call("owner_of", model_id))
        return None if int(owner, 16) == 0 else owner

    def get(self, model_id: bytes) -> ModelRecord:
        if self.owner_of(model_id) is None:
            raise UnknownModel(f"model 0x{model_id.hex()} is not registered")
        m = self._call("get", model_id)
        return ModelRecord(model_id, m[0], m[1], int(m[2]), list(m[3]), list(m[4]), m[5], int(m[6]))

    def register_derived(
        self, model_id: bytes, parent: bytes, license: str, datasets: list[bytes] | None = None, metadata_uri: str = ""
    ) -> SentTransaction:
        """A model derived from `parent`: its royalty (the parent's bps) goes to the lineage's root owner.
        Commit-reveal, as `register`."""
        return _commit_then(self, model_id, "register_derived", model_id, parent, license, datasets or [], metadata_uri)

    def royalty_info(self, model_id: bytes) -> tuple[str, int]:
        payee, bps = self._call("royalty_info", model_id)
        return str(payee), int(bps)

    def royalty_terms(self, model_id: bytes) -> tuple[str, int, int]:
        """(payee, bps, registered_at): the royalty applies to service after registered_at, through
        every channel (an increment spanning it pays on the share of its time after it)."""
        payee, bps, registered_at = self._call("royalty_terms", model_id)
        return str(payee), int(bps), int(registered_at)

    def transfer(self, model_id: bytes, new_owner: str) -> SentTransaction:
        return self._tx("transfer", model_id, new_owner)

    def all_ids(self) -> list[bytes]:
        return [bytes(self._call("model_at", i)) for i in range(int(self._call("model_count")))]

    def set_name(self, model_id: bytes, name: str) -> SentTransaction:
        """Name (or with "" unname) a model the caller owns; `name` must be canonical
        (`allmende.core.model_names.canonical_name`), and not held by another model."""
        return self._tx("set_name", model_id, name)

    def name_of(self, model_id: bytes) -> str:
        """The model's name on chain, "" if it has none."""
        return str(self._call("name_of", model_id))

    def model_by_name(self, name: str) -> bytes | None:
        """The model holding exactly this canonical name, or None."""
        model_id = bytes(self._call("model_by_name", name))
        return None if model_id == bytes(32) else model_id


@dataclass(frozen=True)
class AccountRecord:
    role: int
    stake: int
    unbonding: int
    unbond_at: int
    endpoint: str
    x25519_key: bytes
    paused: bool
    registered_at: int


@dataclass(frozen=True)
class OfferRecord:
    price_in: int
    price_out: int
    active: bool


class Registry(_Binding):
    name = "Registry"

    def register(self, role: int, endpoint: str, x25519_key: bytes, amount: int) -> SentTransaction:
        return self._tx("register", role, endpoint, x25519_key, _amount(amount, "stake"))

    def account(self, who: str) -> AccountRecord:
        a = self._call("accounts", who)
        return AccountRecord(int(a[0]), int(a[1]), int(a[2]), int(a[3]), a[4], bytes(a[5]), bool(a[6]), int(a[7]))

    def set_offer(self, model_id: bytes, price_in: int, price_out: int) -> SentTransaction:
        return self._tx("set_offer", model_id, _amount(price_in, "price_in"), _amount(price_out, "price_out"))

    def remove_offer(self, model_id: bytes) -> SentTransaction:
        return self._tx("remove_offer", model_id)

    def offer(self, provider: str, model_id: bytes) -> OfferRecord:
        o = self._call("offers", provider, model_id)
        return OfferRecord(int(o[0]), int(o[1]), bool(o[2]))

    def models_of(self, provider: str) -> list[bytes]:
        return [bytes(m) for m in self._call("models_of", provider)]

    def is_active(self, who: str) -> bool:
        return bool(self._call("is_active", who))

    def add_stake(self, amount: int) -> SentTransaction:
        return self._tx("add_stake", _amount(amount, "amount"))

    def unbond(self, amount: int) -> SentTransaction:
        return self._tx("unbond", _amount(amount, "amount"))

    def withdraw(self) -> SentTransaction:
        return self._tx("withdraw")

    def providers_of(self, model_id: bytes, page: int = 100) -> list[str]:
        """Every active provider with an active offer for `model_id`, read page by page."""
        found: list[str] = []
        start, count = 0, int(self._call("model_provider_count", model_id))
        while start < count:
            batch, start = self._call("providers_of", model_id, start, page)
            found.extend(batch)
        return found

    def all_accounts(self) -> list[str]:
        return [str(self._call("account_at", i)) for i in range(int(self._call("account_count")))]

    def receipt_domain(self) -> Domain:
        return Domain(self.client.chain_id, self.address)

    def set_verdicts(self, verdicts: str) -> SentTransaction:
        return self._tx("set_verdicts", verdicts)

    def stake_of(self, who: str) -> int:
        return int(self._call("stake_of", who))

    def role_of(self, who: str) -> int:
        return int(self._call("role_of", who))

    def role_stake(self, role: int) -> int:
        return int(self._call("role_stake", role))

    def slashable_of(self, who: str) -> int:
        """Bonded plus unbonding stake: what a guilty verdict can take a share of."""
        return int(self._call("slashable_of", who))

    def open_cases(self, who: str) -> int:
        """Fraud cases open against `who`; while any is, it cannot withdraw."""
        return int(self._call("open_cases", who))


@dataclass(frozen=True)
class ChannelRecord:
    payer: str
    provider: str
    deposit: int
    spent: int
    closes_at: int
    opened_at: int


class Channels(_Binding):
    name = "Channels"

    def open(self, provider: str, amount: int) -> bytes:
        """Open a channel; returns its id (read from the ChannelOpened event)."""
        sent = self._tx("open", provider, _amount(amount, "deposit", 128))
        (event,) = self.contract.events.ChannelOpened().process_receipt(sent.receipt, errors=DISCARD)
        return bytes(event["args"]["channel_id"])

    def top_up(self, channel_id: bytes, amount: int) -> SentTransaction:
        return self._tx("top_up", channel_id, _amount(amount, "amount", 128))

    def request_close(self, channel_id: bytes) -> SentTransaction:
        return self._tx("request_close", channel_id)

    def withdraw(self, channel_id: bytes) -> SentTransaction:
        """The unspent deposit of a closed channel to its payer (sent by the payer, or by the
        provider of a released channel)."""
        return self._tx("withdraw", channel_id)

    def release(self, channel_id: bytes) -> SentTransaction:
        """As the channel's provider: close it now (its payer may withdraw at once)."""
        return self._tx("release", channel_id)

    def redeem(
        self,
        vouchers: list[SignedVoucher],
        fund_into: bytes | None = None,
        fund_most: int = 0,
        release: bool = False,
    ) -> SentTransaction:
        """Redeem `vouchers` (as their channels' provider). A relay may put what their
        zero-model vouchers pay, up to `fund_most`, straight into its own channel `fund_into`
        (no `fund` transaction), and with `release` give the channels up at once, their
        payers' unspent deposits sent back in the same transaction (a cooperative close)."""
        batch = [v.as_tuple() for v in vouchers]
        if fund_into is None and not release:
            return self._tx("redeem", batch)
        function = self.contract.get_function_by_signature(
            "redeem((bytes32,bytes32,uint256,bytes)[],bytes32,uint256,bool)"
        )
        most = _amount(fund_most, "fund_most", 128) if fund_into is not None else 0
        return self.client.transact(function(batch, fund_into or bytes(32), most, release))

    def withdraw_earnings(self) -> SentTransaction:
        return self._tx("withdraw_earnings")

    def fund(self, channel_id: bytes, amount: int) -> SentTransaction:
        """Add `amount` of this account's relay balance to its channel's deposit (no tokens move)."""
        return self._tx("fund", channel_id, _amount(amount, "amount", 128))

    def withdraw_relay(self) -> SentTransaction:
        """Take this account's relay balance out as tokens, less the protocol fee."""
        return self._tx("withdraw_relay")

    def relay_balance(self, who: str) -> int:
        """What relayed (zero-model) vouchers paid `who`, its fee still unpaid."""
        return int(self._call("relay_balance", who))

    def relayed(self, channel_id: bytes) -> int:
        """How much of the channel's deposit came from its payer's relay balance."""
        return int(self._call("relayed", channel_id))

    def channel(self, channel_id: bytes) -> ChannelRecord:
        c = self._call("channel", channel_id)
        return ChannelRecord(c[0], c[1], int(c[2]), int(c[3]), int(c[4]), int(c[5]))

    def redeemed(self, channel_id: bytes, model_id: bytes) -> int:
        return int(self._call("redeemed", channel_id, model_id))

    def channel_nonce(self, payer: str) -> int:
        """How many channels `payer` has opened (the next one's nonce)."""
        return int(self._call("channel_nonce", payer))

    def channel_id_of(self, payer: str, provider: str, nonce: int) -> bytes:
        """The id `open` gives the `nonce`-th channel of `payer`, if it went to `provider`."""
        return keccak(abi_encode(["address", "address", "address", "uint256"], [self.address, payer, provider, nonce]))

    def earnings(self, who: str) -> int:
        return int(self._call("earnings", who))

    def treasury(self) -> str:
        return str(self._call("treasury"))

    def voucher_domain(self) -> Domain:
        return Domain(self.client.chain_id, self.address)

    def set_payment_token_approved(self, approved: bool) -> SentTransaction:
        return self._tx("set_payment_token_approved", approved)


@dataclass(frozen=True)
class CaseRecord:
    case_id: int
    provider: str
    reporter: str
    model_id: bytes
    evidence_hash: bytes
    evidence_uri: str
    deadline: int
    guilty_weight: int
    innocent_weight: int
    status: int  # 1 open, 2 guilty, 3 not guilty, 4 inconclusive
    slashed: int
    snapshot: int  # vote weights are stakes at the end of this second (just before opening)
    provider_stake: int  # bonded + unbonding stake of the provider when the case opened
    bond: int = 0  # each reporter's bond
    opened_at: int = 0
    total_stake: int = 0  # the quorum base: validators' snapshot stake less the reporters'
    quorum_bps: int = 0


@dataclass(frozen=True)
class CaseReport:
    """One validator's report in a case: its receipt and its evidence."""

    reporter: str
    receipt_digest: bytes
    evidence_hash: bytes
    evidence_uri: str


class Verdicts(_Binding):
    name = "Verdicts"

    def open_case(self, receipt: tuple[Any, ...], signature: bytes, evidence_hash: bytes, evidence_uri: str) -> int:
        """Report the receipt's provider: opens a case, or joins the one open on this
        (provider, model); returns its id."""
        sent = self._tx("open_case", receipt, signature, evidence_hash, evidence_uri)
        events = self.contract.events
        found: list[Any] = list(events.CaseOpened().process_receipt(sent.receipt, errors=DISCARD))
        found += list(events.CaseJoined().process_receipt(sent.receipt, errors=DISCARD))
        (event,) = found
        return int(event["args"]["case_id"])

    def open_case_of(self, provider: str, model_id: bytes) -> int:
        """The case open on (provider, model), 0 when none is."""
        return int(self._call("open_case_of", provider, model_id))

    def reports(self, case_id: int) -> list[CaseReport]:
        """Every report of the case, the opener's first."""
        rows = [self._call("reports", case_id, i) for i in range(int(self._call("report_count", case_id)))]
        return [CaseReport(r[0], bytes(r[1]), bytes(r[2]), r[3]) for r in rows]

    def is_reporter(self, case_id: int, who: str) -> bool:
        return bool(self._call("is_reporter", case_id, who))

    def rewards_of(self, who: str) -> int:
        """ALM `who` was paid as reporter rewards, over all cases."""
        return int(self._call("rewards_of", who))

    def voted_guilty(self, case_id: int, who: str) -> bool:
        return bool(self._call("voted_guilty", case_id, who))

    def vote(self, case_id: int, guilty: bool, proof: int = 0) -> SentTransaction:
        """A vote; a guilty one names the report (index) whose evidence proves the fault,
        the first that does: the reporter reward follows these names."""
        return self._tx("vote", case_id, guilty, proof)

    def claim(self, case_id: int) -> SentTransaction:
        """A reporter takes its bond (less any forfeit) and reward share from a resolved case."""
        return self._tx("claim", case_id)

    def claimable(self, case_id: int, who: str) -> int:
        """What `claim` would pay `who` now (0: nothing, or claimed)."""
        return int(self._call("claimable", case_id, who))

    def penalize(self, case_id: int, juror: str) -> SentTransaction:
        """Slash a juror that voted against a guilty or not-guilty verdict (anyone may)."""
        return self._tx("penalize", case_id, juror)

    def resolve(self, case_id: int) -> SentTransaction:
        return self._tx("resolve", case_id)

    def case(self, case_id: int) -> CaseRecord:
        c = self._call("cases", case_id)
        return CaseRecord(
            case_id,
            c[0],
            c[1],
            bytes(c[2]),
            bytes(c[4]),
            c[5],
            int(c[8]),
            int(c[10]),
            int(c[11]),
            int(c[12]),
            int(c[13]),
            int(c[14]),
            int(c[15]),
            int(c[6]),
            int(c[7]),
            int(c[9]),
            int(c[16]),
        )

    def case_count(self) -> int:
        return int(self._call("case_count"))

    def voted(self, case_id: int, who: str) -> bool:
        return bool(self._call("voted", case_id, who))

    def all_cases(self) -> list[CaseRecord]:
        return [self.case(i) for i in range(1, self.case_count() + 1)]

    def vote_weight(self, case_id: int, who: str) -> int:
        """What `who`'s vote on the case would weigh; 0 when it cannot vote."""
        return int(self._call("vote_weight", case_id, who))

    def publish_scores(self, providers: list[str], scores: list[int]) -> SentTransaction:
        return self._tx("publish_scores", providers, scores)

    def score(self, validator: str, provider: str) -> tuple[int, int]:
        return int(self._call("score", validator, provider)), int(self._call("scored_at", validator, provider))


def _checkpointed_tx(binding: _Binding, fn_name: str, *args: Any) -> SentTransaction:
    """A transaction whose outcome and gas depend on the block's second: estimated against
    the next (pending) block, with room for fresh checkpoints. On an idle chain the latest
    block can be one mined this very second: a proposal estimated there would miss stake
    staked in it (the snapshot is the second before), and a stake estimated there would
    overwrite that second's checkpoint where the mined transaction, a second later, writes
    new ones (two storage slots each) and would run out of gas."""
    fn = getattr(binding.contract.functions, fn_name)(*args)
    client = binding.client
    gas = client.rpc(lambda: fn.estimate_gas({"from": client.address}, block_identifier="pending"), fn_name)
    return client.transact(fn, gas=int(gas) * 5 // 4 + 100_000)


PROPOSAL_STATES = ("pending", "active", "defeated", "succeeded", "queued", "executed", "expired", "canceled")
SUPPORT = {"against": 0, "for": 1, "abstain": 2}


@dataclass(frozen=True)
class ProposalRecord:
    proposal_id: int
    proposer: str
    start: int
    end: int
    for_votes: int
    against_votes: int
    abstain_votes: int
    queued: bool
    executed: bool
    eta: int
    description: str
    state: str
    quorum: int
    quorum_bps: int = 0
    expires_at: int = 0  # queue by then (after the vote), or it expires
    snapshot: int = 0  # weights are what was held from held_from to the end of this second
    canceled: bool = False
    held_from: int = 0  # the start of the lookback (snapshot - unbonding_period)


class Governor(_Binding):
    name = "Governor"

    def propose(self, calls: list[tuple[str, int, bytes]], description: str) -> int:
        targets = [c[0] for c in calls]
        values = [c[1] for c in calls]
        payloads = [c[2] for c in calls]
        sent = _checkpointed_tx(self, "propose", targets, values, payloads, description)
        (event,) = self.contract.events.ProposalCreated().process_receipt(sent.receipt, errors=DISCARD)
        return int(event["args"]["proposal_id"])

    def proposal(self, proposal_id: int) -> ProposalRecord:
        p = self._call("proposals", proposal_id)
        state = PROPOSAL_STATES[int(self._call("state", proposal_id))]
        return ProposalRecord(
            proposal_id,
            p[0],
            int(p[1]),
            int(p[2]),
            int(p[3]),
            int(p[4]),
            int(p[5]),
            bool(p[6]),
            bool(p[7]),
            int(p[8]),
            p[9],
            state,
            int(self._call("quorum", proposal_id)),
            int(p[10]),
            int(p[11]),
            int(p[12]),
            bool(p[13]),
            int(p[14]),
        )

    def calls(self, proposal_id: int) -> list[tuple[str, int, bytes]]:
        """The calls the proposal executes: (target, value, calldata)."""
        targets, values, payloads = self._call("calls", proposal_id)
        return [(str(t), int(v), bytes(d)) for t, v, d in zip(targets, values, payloads, strict=True)]

    def ids(self) -> list[int]:
        return [int(self._call("proposal_at", i)) for i in range(int(self._call("proposal_count")))]

    def resolve_id(self, text: str) -> int:
        """A proposal id from its full decimal form or a unique prefix (what `gov list` shows)."""
        text = text.strip().removesuffix("…")
        if not text.isdigit():
            raise InvalidInput(f"proposal id {text!r} must be digits (as `allmende gov list` shows them)")
        ids = self.ids()
        if int(text) in ids:
            return int(text)
        matches = [pid for pid in ids if str(pid).startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise InvalidInput(f"no proposal with id {text} (see `allmende gov list`)")
        raise InvalidInput(f"{len(matches)} proposals start with {text}: give more digits")

    def vote(self, proposal_id: int, support: str) -> SentTransaction:
        if support not in SUPPORT:
            raise InvalidInput("support must be for, against or abstain")
        return self._tx("cast_vote", proposal_id, SUPPORT[support])

    def queue(self, proposal_id: int) -> SentTransaction:
        return self._tx("queue", proposal_id)

    def execute(self, proposal_id: int) -> SentTransaction:
        return self._tx("execute", proposal_id)

    def cancel(self, proposal_id: int) -> SentTransaction:
        return self._tx("cancel", proposal_id)

    def vote_weight(self, proposal_id: int, who: str) -> int:
        """What `who`'s vote on the proposal weighs: its weight held through the proposal's lookback."""
        return int(self._call("vote_weight", proposal_id, who))

    def weight_at(self, who: str, timestamp: int) -> int:
        return int(self._call("weight_at", who, timestamp))

    def has_voted(self, proposal_id: int, who: str) -> bool:
        return bool(self._call("has_voted", proposal_id, who))


@dataclass(frozen=True)
class HolderRecord:
    staked: int
    delegate: str | None
    unbonding: int
    unbond_at: int


class Votes(_Binding):
    """Token holders' governance stake: ALM locked here votes through a delegate."""

    name = "Votes"

    def stake(self, amount: int) -> SentTransaction:
        return _checkpointed_tx(self, "stake", _amount(amount, "amount"))

    def unstake(self, amount: int) -> SentTransaction:
        return _checkpointed_tx(self, "unstake", _amount(amount, "amount"))

    def withdraw(self) -> SentTransaction:
        return self._tx("withdraw")

    def delegate(self, to: str) -> SentTransaction:
        return _checkpointed_tx(self, "delegate", to)

    def holder(self, who: str) -> HolderRecord:
        h = self._call("holders", who)
        delegate = None if int(h[1], 16) == 0 else str(h[1])
        return HolderRecord(int(h[0]), delegate, int(h[2]), int(h[3]))

    def votes_of(self, who: str) -> int:
        """Voting power delegated to `who` now (its own stake included if it delegates to itself)."""
        return int(self._call("votes_of", who))

    def total_votes(self) -> int:
        return int(self._call("total_votes"))


TEMPLATE_EVALUATE = 1
TEMPLATE_FEDERATED_ROUND = 2
TEMPLATE_AGGREGATE = 3
TEMPLATES = {
    "evaluate": TEMPLATE_EVALUATE,
    "federated_round": TEMPLATE_FEDERATED_ROUND,
    "aggregate": TEMPLATE_AGGREGATE,
}
MICRO_EPSILON = 1_000_000  # the Data contract counts epsilon in millionths


@dataclass(frozen=True)
class DatasetRecord:
    dataset_id: bytes
    owner: str
    vault: str
    license: str
    policy_uri: str
    registered_at: int
    accesses: int


@dataclass(frozen=True)
class GrantRecord:
    grant_id: int
    dataset_id: bytes
    grantee: str
    template: int
    model_ids: list[bytes]
    expires_at: int
    epsilon_budget: int
    epsilon_spent: int
    revoked: bool


@dataclass(frozen=True)
class AccessRecord:
    grant_id: int
    job_id: bytes
    model_id: bytes
    result_hash: bytes
    epsilon_spent: int
    at: int


@dataclass(frozen=True)
class AttestationRecord:
    validator: str
    job_id: bytes
    metric: str
    value_ppm: int
    report_hash: bytes
    at: int


class Data(_Binding):
    """Datasets, grants with a privacy budget (epsilon in millionths), the access log, attestations."""

    name = "Data"

    def register_dataset(self, dataset_id: bytes, vault: str, license: str, policy_uri: str = "") -> SentTransaction:
        """Register by commit-reveal (two transactions); returns the reveal."""
        return _commit_then(self, dataset_id, "register_dataset", dataset_id, vault, license, policy_uri)

    def set_vault(self, dataset_id: bytes, vault: str) -> SentTransaction:
        return self._tx("set_vault", dataset_id, vault)

    def dataset(self, dataset_id: bytes) -> DatasetRecord:
        d = self._call("dataset", dataset_id)
        return DatasetRecord(dataset_id, d[0], d[1], d[2], d[3], int(d[4]), int(d[5]))

    def is_registered(self, dataset_id: bytes) -> bool:
        try:
            self.dataset(dataset_id)
        except ContractReverted:
            return False
        return True

    def grant(
        self,
        dataset_id: bytes,
        grantee: str,
        template: int,
        model_ids: list[bytes],
        expires_at: int,
        epsilon_budget: int,
    ) -> int:
        """Grant access; returns the grant id (from the AccessGranted event)."""
        sent = self._tx(
            "grant",
            dataset_id,
            grantee,
            template,
            model_ids,
            _amount(expires_at, "expires_at"),
            _amount(epsilon_budget, "epsilon_budget"),
        )
        events = self.contract.events.AccessGranted().process_receipt(sent.receipt, errors=DISCARD)
        return int(events[0]["args"]["grant_id"])

    def revoke(self, grant_id: int) -> SentTransaction:
        return self._tx("revoke", grant_id)

    def get_grant(self, grant_id: int) -> GrantRecord:
        g = self._call("get_grant", grant_id)
        return GrantRecord(
            grant_id,
            bytes(g[0]),
            g[1],
            int(g[2]),
            [bytes(m) for m in g[3]],
            int(g[4]),
            int(g[5]),
            int(g[6]),
            bool(g[7]),
        )

    def permits(self, grant_id: int, grantee: str, template: int, model_id: bytes, epsilon: int) -> bool:
        return bool(self._call("permits", grant_id, grantee, template, model_id, _amount(epsilon, "epsilon")))

    def record_access(
        self, grant_id: int, job_id: bytes, model_id: bytes, result_hash: bytes, epsilon: int
    ) -> SentTransaction:
        return self._tx("record_access", grant_id, job_id, model_id, result_hash, _amount(epsilon, "epsilon"))

    def job_logged(self, dataset_id: bytes, job_id: bytes) -> bool:
        """Whether `job_id` is in the access log of `dataset_id` (job ids are unique per dataset)."""
        return bool(self._call("job_logged", dataset_id, job_id))

    def dataset_ids(self) -> list[bytes]:
        return [bytes(self._call("dataset_at", i)) for i in range(int(self._call("dataset_count")))]

    def grant_count(self) -> int:
        return int(self._call("grant_count"))

    def accesses(self, dataset_id: bytes) -> list[AccessRecord]:
        count = self.dataset(dataset_id).accesses
        out = []
        for i in range(count):
            a = self._call("access_at", dataset_id, i)
            out.append(AccessRecord(int(a[0]), bytes(a[1]), bytes(a[2]), bytes(a[3]), int(a[4]), int(a[5])))
        return out

    def attest(
        self, model_id: bytes, job_id: bytes, metric: str, value_ppm: int, report_hash: bytes
    ) -> SentTransaction:
        return self._tx("attest", model_id, job_id, metric, _amount(value_ppm, "value_ppm"), report_hash)

    def attestations(self, model_id: bytes) -> list[AttestationRecord]:
        out = []
        for i in range(int(self._call("attestation_count", model_id))):
            a = self._call("attestation_at", model_id, i)
            out.append(AttestationRecord(a[0], bytes(a[1]), a[2], int(a[3]), bytes(a[4]), int(a[5])))
        return out


class Contracts:
    """All bindings of one deployment, for one client (one signing account)."""

    def __init__(self, client: ChainClient, deployment: Deployment) -> None:
        self.client = client
        self.deployment = deployment
        self.token = Token(client, deployment)
        self.stable = Stable(client, deployment)
        self.params = Params(client, deployment)
        self.models = Models(client, deployment)
        self.registry = Registry(client, deployment)
        self.channels = Channels(client, deployment)
        self.verdicts = Verdicts(client, deployment)
        self.governor = Governor(client, deployment)
        self.data = Data(client, deployment)
        self._votes: Votes | None = None

    @property
    def votes(self) -> Votes:
        """Token holders' governance stake (bound on first use: only governance needs it)."""
        if self._votes is None:
            self._votes = Votes(self.client, self.deployment)
        return self._votes
