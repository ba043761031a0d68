"""`allmende gov …` — governance from the shell: read the parameters, stake or delegate ALM
for votes, propose changes by name and value, read every proposal's decoded calls, vote,
queue, execute, cancel; `allmende params` is `gov params`."""

from __future__ import annotations

import contextlib
import datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import Any

import typer
from rich.table import Column, Table

from allmende.chain import ChainClient, ContractReverted, Contracts
from allmende.chain.calls import DecodedCall, decode_call, encode_call
from allmende.cli.common import alm, console, contracts_for, find_deployments, friendly_errors, usd
from allmende.config import from_environment
from allmende.core.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, help="Read parameters, stake for votes, propose, vote, queue and execute.")

RPC = typer.Option(None, help="JSON-RPC URL (default $ALLMENDE_RPC, else the one in the deployments file)")
DEPLOYMENTS = typer.Option(
    None,
    help="deployments JSON (default $ALLMENDE_DEPLOYMENTS, else <state-dir>/run/deployments.json as `allmende up` "
    "writes it, else <state-dir>/deployments.json)",
)
KEY = typer.Option(..., help="keystore file or devnet:N")
PROPOSAL = typer.Argument(..., help="proposal id, or a unique prefix of it (as `gov list` shows)")
ALM_UNIT = 10**18


def _when(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def parse_alm(text: str) -> int:
    """'10000' or '2.5' ALM → base units, exactly (no float)."""
    try:
        value = Decimal(text.replace("_", "").removesuffix("ALM").strip())
    except InvalidOperation:
        raise InvalidInput(f"amount {text!r} is not a number of ALM") from None
    units = value * ALM_UNIT
    if not value.is_finite() or units <= 0 or units != units.to_integral_value():
        raise InvalidInput(f"amount {text!r} must be a positive number of ALM with at most 18 decimals")
    return int(units)


# ------------------------------------------------------------------ reading


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _bounds(name: str, lowest: int, bound: int) -> str:
    """In the parameter's unit: `0 % – 100 %`, `≥ 1 min`, `≥ 1.0000 ALM`, or `none` (an
    upper bound of 0 is none)."""

    def unit(value: int) -> str:
        return meaning(name, value) or str(value)

    if bound:
        return f"{unit(lowest)} – {unit(bound)}"
    return f"≥ {unit(lowest)}" if lowest else "none"


def meaning(name: str, value: int) -> str:
    """A parameter's value in its unit: percent, ALM or a duration (by its name)."""
    if name.endswith("_bps"):
        return f"{Decimal(value) / 100} %"
    if "stake" in name or name.endswith(("_bond", "_threshold")):
        return alm(value)
    if name.endswith(("_period", "_delay")):
        return _duration(value)
    return ""


def params(rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """Every protocol parameter: its current value, what it means, and its bounds (lower–upper)."""
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        rows = c.params.bounds()
        widest = max((len(n) for n in rows), default=4)
        table = Table(
            Column("name", min_width=widest, no_wrap=True),
            Column("value", overflow="fold"),
            "meaning",
            "bounds",
            title="Params (changed only by governance)",
        )
        for name, (value, lowest, bound) in rows.items():
            table.add_row(name, str(value), meaning(name, value), _bounds(name, lowest, bound))
    console.print(table)


app.command("params")(params)


def _decoded(c: Contracts, proposal_id: int) -> list[DecodedCall]:
    return [decode_call(c.deployment, t, v, d) for t, v, d in c.governor.calls(proposal_id)]


def _change(c: Contracts, call: DecodedCall, executed: bool) -> str:
    """For Params.set: `protocol_fee_bps: 100 → 150 (1.5 %; bound 10000)`, the current value
    on the left (once executed: `protocol_fee_bps set to 150 (now 150; …)`)."""
    if call.contract != "Params" or call.function != "set":
        return ""
    name, new = str(call.arguments[0][1]), int(call.arguments[1][1])
    try:
        current = str(c.params.get(name))
    except ContractReverted:
        current = "(new name)"
    bound, lowest = c.params.upper_bound(name), c.params.lower_bound(name)
    limits = (f"at least {lowest}" if lowest else "", f"bound {bound}" if bound else "")
    notes = [x for x in (meaning(name, new), *limits) if x]
    if executed:
        return f"{name} set to {new} (now {'; '.join([current, *notes])})"
    return f"{name}: {current} → {new}" + (f" ({'; '.join(notes)})" if notes else "")


AMOUNT_ARGUMENTS = ("amount", "value", "wad", "stake", "amount_")


def _amounts(call: DecodedCall) -> str:
    """The token amounts a call moves, in units (`amount = 1,000,000.0000 ALM`): decoded calls
    show base units (18 decimals for ALM, 6 for the devnet's dUSD)."""
    unit = {"AllmendeToken": alm, "Votes": alm, "Registry": alm, "MockStable": usd}.get(call.contract)
    if unit is None:
        return ""
    shown = [f"{n} = {unit(v)}" for n, v in call.arguments if n in AMOUNT_ARGUMENTS and isinstance(v, int)]
    return ", ".join(shown)


@app.command("list")
def list_(rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """All proposals: id (a prefix `show`, `vote`… accept), state, tallies, description and the calls they make."""
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        ids = c.governor.ids()
        width = _prefix_width(ids)
        rows = [(pid, c.governor.proposal(pid), _decoded(c, pid)) for pid in ids]
    if not rows:
        console.print("no proposals yet")
    for pid, p, calls in rows:
        console.print(
            f"[bold]{str(pid)[:width]}[/bold]  {p.state:<9}  for {alm(p.for_votes)} · against {alm(p.against_votes)}"
            f" · abstain {alm(p.abstain_votes)}",
            highlight=False,
        )
        console.print(f"    {p.description[:200]}", highlight=False, markup=False)
        for call in calls:
            units = _amounts(call)
            console.print(f"    → {call.short()}" + (f" ({units})" if units else ""), highlight=False, markup=False)


def _prefix_width(ids: list[int], least: int = 10) -> int:
    """The shortest prefix length (at least `least`) that tells every id apart."""
    texts = [str(i) for i in ids]
    width = least
    while len({t[:width] for t in texts}) < len(texts):
        width += 1
    return width


@app.command("show")
def show(proposal_id: str = PROPOSAL, rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """Everything about one proposal: its decoded calls, state, tallies, quorum, snapshot and eta."""
    with friendly_errors():
        c = contracts_for(rpc, None, deployments)
        pid = c.governor.resolve_id(proposal_id)
        p = c.governor.proposal(pid)
        calls = _decoded(c, pid)
        changes = [_change(c, call, p.executed) for call in calls]
    console.print(f"proposal {pid}")
    console.print(f"  state       [bold]{p.state}[/bold]")
    console.print(f"  description {p.description}")
    console.print("  calls (read from chain; this is what executes, whatever the description says):")
    for i, (call, change) in enumerate(zip(calls, changes, strict=True), 1):
        console.print(f"    {i}. {call.long()}", highlight=False)
        if _amounts(call):
            console.print(f"       {_amounts(call)}", highlight=False)
        if change:
            console.print(f"       {change}", highlight=False)
        if not call.decoded:
            console.print("       [red]not decodable from the deployment's ABIs: do not vote for it unread[/red]")
    console.print(f"  proposer    {p.proposer}")
    console.print(
        f"  snapshot    weights held from {_when(p.held_from)} to {_when(p.snapshot)} (the lowest in between)"
    )
    console.print(f"  voting      {_when(p.start)} → {_when(p.end)}")
    console.print(
        f"  tally       for {alm(p.for_votes)}, against {alm(p.against_votes)}, abstain {alm(p.abstain_votes)}; "
        f"quorum {alm(p.quorum)} ({Decimal(p.quorum_bps) / 100} % of the voting stake)"
    )
    console.print(f"  queue by    {_when(p.expires_at)}")
    console.print(f"  eta         {_when(p.eta)}")
    if p.eta:  # a queued batch expires the same grace period after its eta
        console.print(f"  execute by  {_when(p.eta + (p.expires_at - p.end))}")


# ------------------------------------------------------------------ proposing


def _simulate(c: Contracts, calls: list[tuple[str, int, bytes]]) -> None:
    """Each call as the Timelock would make it, against the chain's current state."""
    timelock = c.deployment.address("Timelock")
    for i, (target, value, payload) in enumerate(calls, 1):
        tx: Any = {"from": timelock, "to": target, "data": "0x" + payload.hex(), "value": value}
        try:
            c.client.rpc(partial(c.client.w3.eth.call, tx))
        except ContractReverted as exc:
            shown = decode_call(c.deployment, target, value, payload).short()
            raise InvalidInput(
                f"call {i} ({shown}) would fail if executed now: {exc.reason} "
                "(--no-simulate proposes it anyway, e.g. when an earlier call makes it work)"
            ) from None


@app.command("propose")
def propose(
    description: str = typer.Option(..., help="what it does and why (voters see the decoded calls beside it)"),
    set_param: list[str] = typer.Option([], "--set", help="name=value: set a Params value (repeatable)"),
    call: list[str] = typer.Option(
        [],
        help="'TARGET FUNCTION ARG…': any call the Timelock should make, e.g. "
        "'AllmendeToken transfer 0xABC… 1000000000000000000' or '0xADDR \"f(address,uint256)\" 0xABC… 5' "
        "(repeatable)",
    ),
    simulate: bool = typer.Option(True, help="check every call against the current state before proposing"),
    key: str = KEY,
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Propose Params changes (--set) and/or calls (--call), built from names and values."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        calls: list[tuple[str, int, bytes]] = []
        for item in set_param:
            name, _, value = item.partition("=")
            if not name or not value.isdigit():
                raise InvalidInput(f"--set expects name=integer, got {item!r}")
            try:
                c.params.get(name)  # unknown names fail here, before anyone votes on them
            except ContractReverted:
                known = ", ".join(sorted(c.params.bounds()))
                raise InvalidInput(f"--set {name}: unknown name {name!r} in Params; it has {known}") from None
            bound, lowest = c.params.upper_bound(name), c.params.lower_bound(name)
            if bound and int(value) > bound:
                raise InvalidInput(f"--set {name}={value} is above its bound {bound}: it could never execute")
            if int(value) < lowest:
                raise InvalidInput(f"--set {name}={value} is below its lower bound {lowest}: it could never execute")
            calls.append(encode_call(c.deployment, f"Params set {name} {value}"))
        for spec in call:
            calls.append(encode_call(c.deployment, spec))
        if not calls:
            raise InvalidInput("nothing to propose: give --set name=value or --call 'TARGET FUNCTION ARG…'")
        if simulate:
            _simulate(c, calls)
        try:
            proposal_id = c.governor.propose(calls, description)
        except ContractReverted as exc:
            if "threshold" in exc.reason:
                _explain_threshold(c)
            raise
    console.print(f"proposal {proposal_id}")
    for i, (target, amount, payload) in enumerate(calls, 1):
        decoded = decode_call(c.deployment, target, amount, payload)
        units = _amounts(decoded)
        console.print(f"  {i}. {decoded.long()}" + (f" ({units})" if units else ""), highlight=False)


def _explain_threshold(c: Contracts) -> None:
    """Why the Governor refused a proposal for its threshold: the proposer's weight (held through
    the lookback) and the threshold, both in ALM."""
    now = c.client.timestamp()
    threshold = c.params.get("proposal_threshold")
    lookback = c.params.get("unbonding_period")
    weight = c.governor.weight_at(c.client.address, now)
    if weight < threshold:
        ready = _threshold_reached_at(c, threshold, now, lookback)
        when = (
            f"What you hold now reaches it in proposals made after {_when(ready)} by the chain's clock: in a "
            "block later than that (a node that checks a transaction against its latest block refuses it until "
            "such a block exists; on a chain that makes blocks only for transactions, that can be later)"
            if ready is not None
            else "Stake ALM (`allmende gov stake`) or have it delegated to you, and propose once it has been held "
            "for the lookback"
        )
        raise InvalidInput(
            f"stake below proposal threshold: {c.client.address} has {alm(weight)} of voting weight held through "
            f"the {_duration(lookback)} before the chain's latest block ({_when(now)}); "
            f"a proposal needs {alm(threshold)} (proposal_threshold). {when}"
        )


def _threshold_reached_at(c: Contracts, threshold: int, now: int, lookback: int) -> int | None:
    """The first chain time from which what the proposer holds now weighs `threshold` (a
    proposal's snapshot is its block's time less one second), or None if it never will
    without more stake: weight_at only grows with time while nothing is unstaked."""
    me = c.client.address
    low, high = now, now + lookback + 1
    if c.governor.weight_at(me, high) < threshold:
        return None
    while low < high:  # the smallest t with weight_at(t) >= threshold
        middle = (low + high) // 2
        if c.governor.weight_at(me, middle) >= threshold:
            high = middle
        else:
            low = middle + 1
    return low


# ------------------------------------------------------------------ voting


@app.command("vote")
def vote(
    proposal_id: str = PROPOSAL,
    support: str = typer.Argument(..., help="for | against | abstain"),
    key: str = KEY,
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Vote with your weight at the proposal's snapshot (own stake + ALM delegated to you)."""
    with friendly_errors():
        if support not in ("for", "against", "abstain"):
            raise InvalidInput("support must be for, against or abstain")
        c = contracts_for(rpc, key, deployments)
        pid = c.governor.resolve_id(proposal_id)
        try:
            c.governor.vote(pid, support)
        except ContractReverted:
            _check_vote(c, pid)  # says why in words and figures
            raise
        weight = c.governor.vote_weight(pid, c.client.address)
    console.print(f"voted {support} on {pid} with {alm(weight)}")


def _check_vote(c: Contracts, pid: int) -> None:
    """Why the Governor refused a vote, in words: voting not open (with its times), or no weight
    at the snapshot (with where the voter's stake is). Returns if it finds no reason."""
    p = c.governor.proposal(pid)
    me = c.client.address
    if p.state == "pending":
        raise InvalidInput(f"voting on {pid} opens at {_when(p.start)} (it is pending) and ends at {_when(p.end)}")
    if p.state != "active":
        raise InvalidInput(f"voting on {pid} ended at {_when(p.end)}; it is {p.state}")
    if c.governor.has_voted(pid, me):
        raise InvalidInput(f"{me} voted on {pid} already")
    if c.governor.vote_weight(pid, me) == 0:
        h = c.votes.holder(me)
        if h.staked and h.delegate and h.delegate.lower() != me.lower():
            raise InvalidInput(
                f"no stake at snapshot: {me}'s {alm(h.staked)} staked for votes vote through its delegate "
                f"{h.delegate}, who votes with them on {pid} (`allmende gov delegate {me}` to vote yourself on "
                "proposals made once that has been held for the lookback)"
            )
        raise InvalidInput(
            f"no stake at snapshot: {me} held no voting weight from {_when(p.held_from)} to {_when(p.snapshot)}, "
            "the proposal's lookback (stake or delegation must be held through it), so it cannot vote on it"
        )


def _check_queue(c: Contracts, pid: int) -> None:
    """Why the Governor refused to queue a proposal, by its state."""
    p = c.governor.proposal(pid)
    said = {
        "pending": f"voting on {pid} has not started (it opens at {_when(p.start)}); queue it once it passed",
        "active": f"voting on {pid} is open until {_when(p.end)}; queue it after that, if it passed",
        "defeated": f"{pid} was defeated: for {alm(p.for_votes)}, against {alm(p.against_votes)}, abstain "
        f"{alm(p.abstain_votes)}; it needed more for than against and for + abstain ≥ the quorum {alm(p.quorum)}",
        "queued": f"{pid} is queued already; executable from {_when(p.eta)}",
        "executed": f"{pid} was executed already",
        "expired": f"{pid} passed but was not queued by {_when(p.expires_at)}; it expired (propose it again)",
        "canceled": f"{pid} was canceled",
    }
    if p.state in said:
        raise InvalidInput(said[p.state])


def _check_execute(c: Contracts, pid: int) -> None:
    """Why the Governor refused to execute a proposal, by its state and eta."""
    p = c.governor.proposal(pid)
    deadline = p.eta + (p.expires_at - p.end) if p.eta else p.expires_at
    said = {
        "pending": f"{pid} is pending (voting opens at {_when(p.start)}); it must pass and be queued first",
        "active": f"voting on {pid} is open until {_when(p.end)}; it must pass and be queued first",
        "defeated": f"{pid} was defeated; there is nothing to execute",
        "succeeded": f"{pid} passed but is not queued: `allmende gov queue {pid}` first (by {_when(p.expires_at)})",
        "executed": f"{pid} was executed already",
        "expired": f"{pid} expired: {'not executed by ' if p.queued else 'not queued by '}{_when(deadline)}"
        + (" (`allmende gov cancel` removes it from the Timelock)" if p.queued else ""),
        "canceled": f"{pid} was canceled",
    }
    if p.state in said:
        raise InvalidInput(said[p.state])
    if p.queued and c.client.timestamp() < p.eta:
        raise InvalidInput(f"{pid} is queued; the Timelock lets it execute from {_when(p.eta)}")


@app.command("queue")
def queue(proposal_id: str = PROPOSAL, key: str = KEY, rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """Queue a passed proposal in the Timelock."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        pid = c.governor.resolve_id(proposal_id)
        try:
            c.governor.queue(pid)
        except ContractReverted:
            _check_queue(c, pid)
            raise
        eta = c.governor.proposal(pid).eta
    console.print(f"queued {pid}; executable from {_when(eta)}")


@app.command("execute")
def execute(proposal_id: str = PROPOSAL, key: str = KEY, rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """Execute a queued proposal whose Timelock delay is over."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        pid = c.governor.resolve_id(proposal_id)
        try:
            c.governor.execute(pid)
        except ContractReverted:
            _check_execute(c, pid)
            raise
    console.print(f"executed {pid}")


@app.command("cancel")
def cancel(proposal_id: str = PROPOSAL, key: str = KEY, rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """Cancel your own pending proposal, or anyone's queued one whose execution window passed."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        pid = c.governor.resolve_id(proposal_id)
        c.governor.cancel(pid)
    console.print(f"canceled {pid}")


# ------------------------------------------------------------- holders' stake


@app.command("stake")
def stake(
    amount: str = typer.Argument(..., help="ALM to lock for votes, e.g. 10000 or 2.5"),
    key: str = KEY,
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Lock ALM for governance votes (no node needed); it votes through your delegate, you by default."""
    with friendly_errors():
        units = parse_alm(amount)
        c = contracts_for(rpc, key, deployments)
        held = c.token.balance_of(c.client.address)
        if held < units:
            raise InvalidInput(f"{c.client.address} holds {alm(held)}, not {amount} ALM")
        c.token.ensure_allowance(c.votes.address, units)
        sent = c.votes.stake(units)
        h = c.votes.holder(c.client.address)
        lookback = c.params.get("unbonding_period")
        staked_at = int(c.client.rpc(lambda: c.client.w3.eth.get_block(sent.receipt["blockNumber"])["timestamp"]))
    console.print(f"staked {alm(units)} for votes; {alm(h.staked)} staked, voting through {h.delegate}")
    console.print(
        f"  it weighs in proposals made after {_when(staked_at + lookback)} by the chain's clock, once held for "
        f"{_duration(lookback)} (the lookback, as long as the unbonding period: voting power cannot be rented for "
        "a vote)"
    )


@app.command("delegate")
def delegate(
    to: str = typer.Argument(..., help="the address that votes with your staked ALM (yours to vote yourself)"),
    key: str = KEY,
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Give the voting power of your staked ALM to another address (proposals already made keep their snapshot)."""
    from eth_utils import is_address, to_checksum_address

    with friendly_errors():
        if not is_address(to):
            raise InvalidInput(f"{to!r} is not an address")
        c = contracts_for(rpc, key, deployments)
        c.votes.delegate(to_checksum_address(to))
        staked = c.votes.holder(c.client.address).staked
    if staked:
        console.print(f"your {alm(staked)} staked for votes now vote through {to_checksum_address(to)}")
    else:
        console.print(
            f"you have no ALM staked for votes: what you stake with `allmende gov stake` will vote through "
            f"{to_checksum_address(to)} (a node's Registry stake always votes itself)"
        )


@app.command("unstake")
def unstake(
    amount: str = typer.Argument(..., help="ALM to take out of voting, or 'all'"),
    key: str = KEY,
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Stop voting with some staked ALM; `gov withdraw` returns it after the unbonding period."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        staked = c.votes.holder(c.client.address).staked
        units = staked if amount.strip().lower() == "all" else parse_alm(amount)
        if units == 0 or units > staked:
            raise InvalidInput(
                f"unstake above stake: {c.client.address} has {alm(staked)} staked for votes; it cannot unstake "
                f"{amount} (`all` unstakes everything)"
            )
        c.votes.unstake(units)
        h = c.votes.holder(c.client.address)
    console.print(f"unstaking {alm(h.unbonding)}; withdraw from {_when(h.unbond_at)}")


@app.command("withdraw")
def withdraw(key: str = KEY, rpc: str = RPC, deployments: Path = DEPLOYMENTS) -> None:
    """Take back unstaked ALM once its unbonding period is over."""
    with friendly_errors():
        c = contracts_for(rpc, key, deployments)
        before = c.votes.holder(c.client.address).unbonding
        c.votes.withdraw()
    console.print(f"withdrew {alm(before)}")


@app.command("power")
def power(
    address: str = typer.Argument(None, help="whose voting power (default: the --key's address)"),
    key: str = typer.Option(None, help="keystore file or devnet:N (its address, if none is given)"),
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Voting power now: Registry stake, ALM staked in Votes, its delegate, what others delegated, unbonding."""
    from eth_utils import is_address, to_checksum_address

    with friendly_errors():
        c = contracts_for(rpc, key if address is None else None, deployments)
        if address is None:
            if key is None:
                raise InvalidInput("give an ADDRESS or --key")
            address = c.client.address
        if not is_address(address):
            raise InvalidInput(f"{address!r} is not an address")
        who = to_checksum_address(address)
        node_stake = c.registry.stake_of(who)
        h = c.votes.holder(who)
        delegated = c.votes.votes_of(who)
        now = c.client.timestamp()
        weight = c.governor.weight_at(who, now)
        lookback = c.params.get("unbonding_period")
    console.print(f"{who}")
    console.print(
        f"  voting power now   {alm(weight)} (held through the last {_duration(lookback)}: what a proposal made "
        "after this second counts)"
    )
    console.print(
        f"  power at stake     {alm(node_stake + delegated)} (counts in full once held for {_duration(lookback)})"
    )
    console.print(f"  node stake         {alm(node_stake)} (Registry: provider or validator)")
    console.print(f"  staked for votes   {alm(h.staked)}, voting through {h.delegate or who}")
    console.print(f"  delegated to it    {alm(delegated)} (its own stake included if it votes itself)")
    if h.unbonding:
        console.print(f"  unstaking          {alm(h.unbonding)}, withdraw from {_when(h.unbond_at)}")


@app.command("fast-forward")
def fast_forward(
    seconds: int = typer.Argument(..., help="seconds to move the devnet clock"),
    rpc: str = RPC,
    deployments: Path = DEPLOYMENTS,
) -> None:
    """Devnet only: move anvil's clock forward and mine a block (to walk through a proposal).
    Refused, with the reason, on a chain id that is not a devnet's, for a deployment that is not
    a devnet one, and where the node does not offer evm_increaseTime."""
    from allmende.chain import Deployment, DeploymentNotFound
    from allmende.chain.anvil import is_devnet_chain

    env = from_environment()
    with friendly_errors():
        deployment: Deployment | None = None
        with contextlib.suppress(DeploymentNotFound):
            deployment = Deployment.load(find_deployments(deployments))
        url = rpc or (env.rpc_url if env.rpc_url_set else None) or (deployment.rpc_url if deployment else env.rpc_url)
        client = ChainClient(url)
        if not is_devnet_chain(client.chain_id):
            raise InvalidInput(
                f"chain {client.chain_id} is not a devnet: its clock moves with its blocks, nobody can fast-forward it"
            )
        if deployment is not None and deployment.chain_id == client.chain_id and not deployment.devnet:
            raise InvalidInput("this deployment is not a devnet one: fast-forward is for devnets only")
        client.increase_time(seconds)
        now = client.timestamp()
    console.print(f"devnet time is now {_when(now)}")
