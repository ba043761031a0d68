"""A provider that keys on structure is caught by audits drawn from users' traffic (issue 29).

The cheater (allmende.testing.cheats mode `structure`) serves every request of the
structure the first validators' audits had (chat, only max_tokens/temperature/top_p/
stream/n, one of three role sequences) with the real model and everything else from a cheap
generator with a recomputed proof and inflated receipts. Users send the mix real clients
send (allmende.testing.traffic: stop strings and seeds, tools, structured output with
logprobs, legacy completions, Anthropic's Messages and OpenAI's Responses API) through a
real gateway, which counts their shapes and publishes them (`GET /v1/shapes`).

Against audits of the old fixed mix the cheater passes every one; against audits drawn from
the published shapes it is caught within MAX_AUDITS_TO_CATCH audits, and an honest provider
on the same gateway passes every drawn audit (tools, grammars and stop strings included)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from allmende.chain import Deployment
from allmende.chain.anvil import Anvil, DevnetAccount
from allmende.testing.traffic import user_request
from allmende.validator.prompts import AuditTraffic
from tests.conftest import wait_for
from tests.provider.conftest import start_provider
from tests.validator.conftest import AuditNetwork, make_validator, routed, start_gateway
from tests.validator.test_faults_e2e import (
    anvil,  # noqa: F401  (the audit network's chain)
    deployment,  # noqa: F401
    deployments_file,  # noqa: F401
    fresh_account,
    wait_out_the_lookback,
)

# the cheater and this test's gateway: accounts no other module on the audit network uses
CHEAT_ACCOUNT, GATEWAY_ACCOUNT = 6, 8


USERS = 30  # users' requests the gateway forwards before the audits
OLD_MIX_AUDITS = 4  # audits of the first validators' fixed mix: all passed by the cheater
MAX_AUDITS_TO_CATCH = 8  # audits drawn from the published shapes before the cheater is caught
HONEST_AUDITS = 6


class OldMix(AuditTraffic):
    """The audits before this change: the fixed chat mix, whatever users send."""

    def draw(self, published: object, model: str) -> tuple[str, dict[str, object]]:  # type: ignore[override]
        return "chat", self.body(model)


@pytest.fixture
def network(
    anvil: Anvil,  # noqa: F811
    deployments_file: Path,  # noqa: F811
    accounts: list[DevnetAccount],
    audit_network: AuditNetwork,
    tmp_path: Path,
) -> Iterator[tuple[str, str, str]]:
    """(cheater's address, honest provider's address, gateway URL): a cheater and a gateway of this
    test's own (the gateway counts the shapes of only this test's users), and the audit network's
    honest provider."""
    cheat = start_provider(
        anvil, deployments_file, accounts[CHEAT_ACCOUNT], tmp_path / "cheat", ["allmende:tiny"], cheat="structure"
    )
    try:
        url, node = start_gateway(anvil, deployments_file, accounts[GATEWAY_ACCOUNT], tmp_path / "gateway", 2)
        try:
            both = {accounts[CHEAT_ACCOUNT].address, audit_network.honest}
            wait_for("the gateway to route to the cheater and the honest provider", lambda: both <= routed(url), 60)
            yield accounts[CHEAT_ACCOUNT].address, audit_network.honest, url
        finally:
            node.stop()
    finally:
        cheat.stop()


def send_users(gateway: str, model: str, n: int) -> None:
    """`n` users' requests, each to the endpoint its client calls (no retries: all answered)."""
    rng = random.Random(29)
    paths = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "messages": "/v1/messages",
             "responses": "/v1/responses"}  # fmt: skip
    with httpx.Client(base_url=gateway, timeout=120) as http:
        for _ in range(n):
            endpoint, _, _, sent = user_request(rng, model)
            sent = {**sent, "stream": False} if endpoint in ("messages", "responses") else sent
            if sent.get("stream"):
                with http.stream("POST", paths[endpoint], json=sent) as reply:
                    reply.read()
            else:
                reply = http.post(paths[endpoint], json=sent)
            assert reply.status_code == 200, (endpoint, sent, reply.text[:300])


def test_a_provider_that_cheats_every_structure_but_the_old_audits_is_caught_by_drawn_audits(
    anvil: Anvil,  # noqa: F811
    deployment: Deployment,  # noqa: F811
    deployments_file: Path,  # noqa: F811
    accounts: list[DevnetAccount],
    network: tuple[str, str, str],
    tmp_path: Path,
) -> None:
    # Prepare: users' traffic through the gateway, which counts its shapes
    cheater, honest, gateway = network
    auditor_account = fresh_account(anvil, deployment, accounts, "shape auditor")
    auditor, _ = make_validator(anvil, deployments_file, auditor_account, tmp_path / "auditor", gateway)
    wait_out_the_lookback(anvil, deployment, accounts)
    model = httpx.get(f"{gateway}/v1/models").json()["data"][0]["id"]
    send_users(gateway, model, USERS)
    published = httpx.get(f"{gateway}/v1/shapes").json()
    assert published["total"] == USERS and len(published["data"]) >= 5
    auditor.directory.refresh()
    cheat_entry, honest_entry = auditor.directory.entry(cheater), auditor.directory.entry(honest)
    assert cheat_entry is not None and honest_entry is not None
    model_id = next(iter(cheat_entry.offers))

    # Execute + Assert: the old fixed mix is served honestly, every audit passes (the attack)
    drawn_traffic = auditor.traffic
    auditor.traffic = OldMix(seed=3)
    old = [auditor.audit(cheat_entry, model_id) for _ in range(OLD_MIX_AUDITS)]
    assert all(r.ok for r in old), [r.reason for r in old]

    # ... audits drawn from the published shapes catch it within a bounded number
    auditor.traffic = drawn_traffic
    drawn = []
    for _ in range(MAX_AUDITS_TO_CATCH):
        drawn.append(auditor.audit(cheat_entry, model_id))
        if not drawn[-1].ok:
            break
    assert not drawn[-1].ok, [r.reason for r in drawn]
    assert drawn[-1].case_id is not None  # reported with the cheater's own receipt

    # ... and an honest provider passes every drawn audit (tools, grammars, stop strings, completions)
    fair = [auditor.audit(honest_entry, model_id) for _ in range(HONEST_AUDITS)]
    assert all(r.ok for r in fair), [r.reason for r in fair]
