"""Attacks on vault requests by an eavesdropper, a third party with its own key and the operator
of another participating vault, each against real vault processes on anvil (issue 41): replays
of a captured request at the same vault, at another vault and after it expired; SecAgg+ stages
injected by a key with no grant; aborts and a stale unmask sent during a live round; a zip bomb
of model weights; a refused request replayed after the owner's consent changed. Each attack
must be refused with nothing trained, charged or released."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from eth_utils import keccak

from allmende.core.vault_requests import (
    HEADER,
    JOB,
    MAX_LIFETIME,
    ROUND_ABORT,
    ROUND_CHECK,
    ROUND_FIT,
    ROUND_UNMASK,
    SECURE_STAGES,
)
from allmende.testing.vaults import LocalVault, send, signed_request
from allmende.vault import flower
from allmende.vault.flower import Participant, run_federated
from allmende.vault.store import VaultStore
from tests.vault.conftest import CONFIG, SPEC, World, grant

PATHS = {ROUND_CHECK: "/v1/rounds/check", ROUND_ABORT: "/v1/rounds/abort", JOB: "/v1/jobs"}
ROUND = dataclasses.replace(CONFIG, rounds=1, steps=2)


@dataclass(frozen=True)
class Sent:
    """One request the coordinator signed, as an eavesdropper captured it."""

    url: str
    operation: str
    body: bytes
    headers: dict[str, str]
    run_id: int
    round: int

    @property
    def path(self) -> str:
        return PATHS.get(self.operation, "/v1/flower")

    def replay(self, url: str | None = None, path: str | None = None, header: str | None = None) -> httpx.Response:
        kind = "application/x-protobuf" if self.path == "/v1/flower" else "application/json"
        headers = {"content-type": kind, HEADER: header or self.headers[HEADER]}
        target = (url or self.url) + (path or self.path)
        return httpx.post(target, content=self.body, headers=headers, timeout=120)


class Recorder:
    """Captures every request the coordinator signs (what an eavesdropper on the wire sees);
    `before(operation, round)` runs just before one is signed (an attacker acting mid-round)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, before: Callable[[str, int], None] | None = None) -> None:
        self.sent: list[Sent] = []
        self.before = before
        real = flower.signed_headers

        def record(key: bytes, to: Any, operation: str, body: bytes, dataset_id: bytes, grant_id: int,
                   run_id: int = 0, round_number: int = 0, **kw: Any) -> dict[str, str]:  # fmt: skip
            if self.before is not None:
                self.before(operation, round_number)
            headers = real(key, to, operation, body, dataset_id, grant_id, run_id, round_number, **kw)
            self.sent.append(Sent(to.url, operation, body, headers, run_id, round_number))
            return headers

        monkeypatch.setattr(flower, "signed_headers", record)

    def find(self, operation: str, url: str, round_number: int = 1) -> Sent:
        return next(s for s in self.sent if (s.operation, s.url, s.round) == (operation, url, round_number))


def spent(world: World, grant_id: int) -> tuple[int, int]:
    """(ε spent on chain, accesses logged) of a grant."""
    data = world.contracts["validator"].data
    record = data.get_grant(grant_id)
    return record.epsilon_spent, len([a for a in data.accesses(record.dataset_id) if a.grant_id == grant_id])


def code(reply: httpx.Response) -> tuple[int, str]:
    return reply.status_code, reply.json()["error"]["code"]


def federated(world: World, vaults: list[LocalVault], epsilon: float = 20.0) -> tuple[list[int], list[Participant]]:
    coordinator = world.accounts["coordinator"]
    grants = [grant(world, world.vaults.index(v), coordinator.address, "federated_round", [world.base_id], epsilon)
              for v in vaults]  # fmt: skip
    return grants, [Participant(v.url, v.dataset_id, g) for v, g in zip(vaults, grants, strict=True)]


def tampered(sent: Sent, **fields: object) -> str:
    """The captured header with some signed fields changed (the signature left as it was)."""
    header = json.loads(sent.headers[HEADER])
    header.update(fields)
    return json.dumps(header)


# ------------------------------------------------------------------ replays


def test_a_replayed_fedavg_message_trains_nowhere_and_charges_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a researcher's plain-FedAvg round across vaults 0 and 1, captured on the wire
    a, b = world.vaults[0], world.vaults[1]
    grants, participants = federated(world, [a, b])
    recorder = Recorder(monkeypatch)
    run_federated(participants, world.accounts["coordinator"].key, SPEC, world.base_params, world.base_id,
                  dataclasses.replace(ROUND, secagg=False))  # fmt: skip
    before = [spent(world, g) for g in grants]
    assert all(n == 1 for _, n in before)
    fit = recorder.find(ROUND_FIT, a.url)
    topped_up = grant(world, 0, world.accounts["coordinator"].address, "federated_round", [world.base_id], 5.0)

    # Execute: the eavesdropper (or vault B's operator, who sees it too) sends it again: to the
    # same vault, to vault B as it is, to vault B with B's grant and dataset swapped in, and to
    # vault A under the researcher's fresh top-up grant
    again = fit.replay()
    elsewhere = fit.replay(url=b.url)
    swapped = fit.replay(url=b.url, header=tampered(fit, vault=b.account.address, grant=grants[1],
                                                     dataset="0x" + b.dataset_id.hex()))  # fmt: skip
    top_up = fit.replay(header=tampered(fit, grant=topped_up))

    # Assert: each refused, no update in any answer, nothing trained or charged anywhere
    assert code(again) == (409, "request_replayed")
    assert code(elsewhere) == (403, "vault_request_refused")
    assert code(swapped) == (403, "access_denied")  # the signature no longer recovers to the grantee
    assert code(top_up) == (403, "access_denied")
    assert [spent(world, g) for g in grants] == before
    assert spent(world, topped_up) == (0, 0)
    refusals = VaultStore(world.root / "vault-0" / "vault.db").refusals(limit=10)
    assert "request_replayed" in {r.code for r in refusals}


def test_a_request_is_refused_once_it_expired(world: World) -> None:
    researcher = world.accounts["coordinator"]
    v = world.vaults[1]
    g = grant(world, 1, researcher.address, "aggregate", [], 2.0)
    query = {"template": "aggregate", "dataset_id": "0x" + v.dataset_id.hex(), "grant_id": g,
             "columns": ["f20"], "range": [0, 1], "epsilon": 0.5}  # fmt: skip

    def job(name: str, lifetime: int) -> httpx.Request:
        body = {**query, "job_id": "0x" + keccak(text=f"expiry-{g}-{name}").hex()}
        return signed_request(v.url, researcher.key, "/v1/jobs", JOB, body, v.dataset_id, g, lifetime=lifetime)

    short = job("short", 2)
    expiry = json.loads(short.headers[HEADER])["expiry"]
    assert send(short).status_code == 200
    assert code(send(short)) == (409, "request_replayed")
    deadline = time.monotonic() + 10
    while time.time() <= expiry + 0.2 and time.monotonic() < deadline:  # until the vault's clock is past it
        time.sleep(0.1)
    late = send(short)
    assert code(late) == (403, "vault_request_refused") and "expired" in late.json()["error"]["message"]
    far = send(job("far", MAX_LIFETIME + 60))  # a request meant to be kept for later
    assert code(far) == (403, "vault_request_refused") and "ahead" in far.json()["error"]["message"]
    assert spent(world, g) == (500_000, 1)


def test_a_refused_request_cannot_be_replayed_after_the_owner_consents(world: World) -> None:
    # Prepare: the researcher's exact aggregate, refused (this grant answers with DP only)
    researcher = world.accounts["coordinator"]
    v = world.vaults[1]
    g = grant(world, 1, researcher.address, "aggregate", [], 1.0)
    body = {"template": "aggregate", "dataset_id": "0x" + v.dataset_id.hex(), "grant_id": g, "columns": ["f12"],
            "bins": 2, "range": [0, 1]}  # fmt: skip
    captured = signed_request(v.url, researcher.key, "/v1/jobs", JOB, {**body, "job_id": "0x" + "a1" * 32},
                              v.dataset_id, g)  # fmt: skip
    assert code(send(captured)) == (403, "access_denied")

    # Execute: the owner enables exact aggregates for the grant; an attacker replays the request
    VaultStore(world.root / "vault-1" / "vault.db").allow_exact(g)
    replayed = send(captured)

    # Assert: refused, nothing released or logged; the researcher's own fresh request runs
    assert code(replayed) == (409, "request_replayed") and "groups" not in replayed.text
    assert spent(world, g) == (0, 0)
    fresh = signed_request(v.url, researcher.key, "/v1/jobs", JOB, {**body, "job_id": "0x" + "a2" * 32},
                           v.dataset_id, g)  # fmt: skip
    assert send(fresh).status_code == 200
    assert spent(world, g) == (0, 1)


# ----------------------------------------------------------- secure rounds


def test_a_third_party_cannot_inject_secagg_stages(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: one SecAgg+ round of the researcher across vaults 1 and 2, captured
    a, b = world.vaults[1], world.vaults[2]
    coordinator, stranger = world.accounts["coordinator"], world.accounts["validator"]
    grants, participants = federated(world, [a, b])
    recorder = Recorder(monkeypatch)
    run_federated(participants, coordinator.key, SPEC, world.base_params, world.base_id, ROUND)
    before = [spent(world, g) for g in grants]

    # Execute: a third party with no grant replays each stage, and signs each with its own key
    # for the same grant, run and round, and for a round of its own
    answers = []
    for stage in SECURE_STAGES:
        captured = recorder.find(stage, a.url)
        answers.append(("replay", stage, code(captured.replay())))
        for round_number in (1, 2):
            forged = signed_request(a.url, stranger.key, "/v1/flower", stage, captured.body, a.dataset_id, grants[0],
                                    captured.run_id, round_number)  # fmt: skip
            answers.append((f"own key, round {round_number}", stage, code(send(forged))))
    # the grantee's own unmask for a round that was never set up here commits nothing either
    unmask = recorder.find(ROUND_UNMASK, a.url)
    orphan = signed_request(a.url, coordinator.key, "/v1/flower", ROUND_UNMASK, unmask.body, a.dataset_id,
                            grants[0], unmask.run_id, 5)  # fmt: skip

    # Assert
    for how, stage, answer in answers:
        expected = (409, "request_replayed") if how == "replay" else (403, "access_denied")
        assert answer == expected, (how, stage)
    assert code(send(orphan)) == (409, "stage_refused")
    assert [spent(world, g) for g in grants] == before


def test_aborts_and_a_stale_unmask_during_a_live_round_break_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a two-round SecAgg+ run across vaults 0 and 2; an attacker who captured round 1
    # and round 2's checks acts when round 2 is about to unmask (every vault has trained)
    a, b = world.vaults[0], world.vaults[2]
    coordinator, stranger = world.accounts["coordinator"], world.accounts["validator"]
    grants, participants = federated(world, [a, b])
    attacked: list[tuple[str, tuple[int, str]]] = []
    once = threading.Lock()

    def attack(operation: str, round_number: int) -> None:
        if (operation, round_number) != (ROUND_UNMASK, 2) or not once.acquire(blocking=False):
            return
        for v, g in zip((a, b), grants, strict=True):
            stale = recorder.find(ROUND_UNMASK, v.url, 1)
            attacked.append(("round 1's unmask", code(stale.replay())))
            check = recorder.find(ROUND_CHECK, v.url, 2)
            attacked.append(("round 2's check as an abort", code(check.replay(path="/v1/rounds/abort"))))
            body = {"dataset_id": "0x" + v.dataset_id.hex(), "grant_id": g, "run_id": check.run_id, "round": 2}
            forged = signed_request(v.url, stranger.key, "/v1/rounds/abort", ROUND_ABORT, body, v.dataset_id, g,
                                    check.run_id, 2)  # fmt: skip
            attacked.append(("a stranger's abort", code(send(forged))))

    recorder = Recorder(monkeypatch, before=attack)

    # Execute
    result = run_federated(participants, coordinator.key, SPEC, world.base_params, world.base_id,
                           dataclasses.replace(ROUND, rounds=2))  # fmt: skip

    # Assert: the attack ran mid-round and was refused; both rounds completed and were charged
    # once at every vault
    assert len(attacked) == 6
    assert all(answer[0] in (403, 409) for _, answer in attacked), attacked
    assert len(result.round_seconds) == 2
    assert [spent(world, g)[1] for g in grants] == [2, 2]


# -------------------------------------------------------- work after auth


def vm(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


@pytest.fixture(scope="module")
def zip_bomb() -> Iterator[str]:
    """Base64 of an .npz whose one member declares 640 MiB of float64 (a header for 80 Mi zeros
    and the zeros, deflated): about a megabyte on the wire."""
    count = 80 * 2**20
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (count,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zeros = bytes(8 * 2**20)
            for _ in range(count * 8 // len(zeros)):
                member.write(zeros)
        archive.writestr("arr_1.npy", b"")
    yield base64.b64encode(buffer.getvalue()).decode()


def test_a_zip_bomb_is_refused_before_it_inflates(world: World, zip_bomb: str) -> None:
    # Prepare: vault 2's process and its memory now; an evaluate grant for the researcher
    v = world.vaults[2]
    researcher, stranger = world.accounts["coordinator"], world.accounts["validator"]
    g = grant(world, 2, researcher.address, "evaluate", [world.base_id], 1.0)
    before = vm(v.process.pid)
    assert len(zip_bomb) < 2 * 2**20

    def evaluate(key: bytes, name: str) -> httpx.Response:
        body = {"template": "evaluate", "dataset_id": "0x" + v.dataset_id.hex(), "grant_id": g,
                "job_id": "0x" + keccak(text=f"bomb-{g}-{name}").hex(), "epsilon": 0.5,
                "model": {"spec": SPEC.to_json(), "weights": zip_bomb}}  # fmt: skip
        return send(signed_request(v.url, key, "/v1/jobs", JOB, body, v.dataset_id, g))

    # Execute: the bomb from a key with no grant, then from the grantee
    stranger_reply = evaluate(stranger.key, "stranger")
    grantee_reply = evaluate(researcher.key, "grantee")

    # Assert: refused before decoding (the stranger) and before inflating (the grantee); the
    # vault's peak memory grew by less than 128 MiB (inflated, the bomb is 640 MiB)
    assert code(stranger_reply) == (403, "access_denied")
    assert code(grantee_reply) == (400, "bad_job") and "declares" in grantee_reply.json()["error"]["message"]
    after = vm(v.process.pid)
    assert after["VmHWM"] <= max(before["VmHWM"], before["VmRSS"] + 128 * 1024), (before, after)
    assert spent(world, g) == (0, 0)
    assert httpx.get(v.url + "/healthz").status_code == 200


# ------------------------------------------------------------ strict inputs


def raw_job(world: World, v: LocalVault, g: int, body: bytes, key: bytes | None = None) -> httpx.Response:
    key = key or world.accounts["coordinator"].key
    return send(signed_request(v.url, key, "/v1/jobs", JOB, body, v.dataset_id, g))


def test_unknown_fields_duplicate_keys_and_non_finite_numbers_are_refused(world: World) -> None:
    v = world.vaults[1]
    g = grant(world, 1, world.accounts["coordinator"].address, "aggregate", [], 5.0)
    base = {"template": "aggregate", "dataset_id": "0x" + v.dataset_id.hex(), "grant_id": g, "columns": ["f9"],
            "range": [0, 1], "epsilon": 0.5}  # fmt: skip

    def body(**extra: object) -> bytes:
        return json.dumps({**base, "job_id": "0x" + keccak(text=json.dumps(extra)).hex(), **extra}).encode()

    cases = {
        "an ignored filter": body(filter="f1 > 0"),
        "noise 0": body(noise=0),
        "min_group 1": body(min_group=1),
        "a duplicate key": body()[:-1] + b', "epsilon": 50}',
        "an infinite range": body(range=[-1, 2]).replace(b"[-1, 2]", b"[-Infinity, Infinity]"),
        "an overflowing range": body(range=[-1, 2]).replace(b"[-1, 2]", b"[-1e999, 1e999]"),
        "NaN epsilon": body(epsilon=1).replace(b'"epsilon": 1', b'"epsilon": NaN'),
        "a vanishing epsilon": body(epsilon=1e-16),
        "a body nested 100,000 deep": b"[" * 100_000,  # overflowed the C stack: the vault died
    }
    for name, raw in cases.items():
        reply = raw_job(world, v, g, raw)
        assert code(reply) == (400, "bad_job"), (name, reply.text)
    assert spent(world, g) == (0, 0)
    recorded = VaultStore(world.root / "vault-1" / "vault.db").refusals(limit=len(cases))
    assert [r.code for r in recorded] == ["bad_job"] * len(cases)  # each a refusal on the owner's record
    assert httpx.get(v.url + "/healthz").status_code == 200


def test_a_huge_field_does_not_reach_the_log_in_full(world: World) -> None:
    v = world.vaults[1]
    g = grant(world, 1, world.accounts["coordinator"].address, "aggregate", [], 1.0)
    huge = json.dumps({"template": "x" * (4 * 2**20), "dataset_id": "0x" + v.dataset_id.hex(), "grant_id": g})
    reply = raw_job(world, v, g, huge.encode())
    assert code(reply) == (403, "template_not_allowed") and len(reply.text) < 1000
    (latest,) = VaultStore(world.root / "vault-1" / "vault.db").refusals(limit=1)
    assert latest.code == "template_not_allowed" and len(latest.message) <= 301
    longest = max(len(line) for line in (world.root / "vault-1.log").read_text().splitlines())
    assert longest < 2000


def test_unsigned_refusals_are_rate_limited(world: World) -> None:
    v = world.vaults[1]
    store = VaultStore(world.root / "vault-1" / "vault.db")

    def counted() -> int:
        metrics = httpx.get(v.url + "/metrics").text
        return sum(int(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("allmende_vault_refusals_total"))  # fmt: skip

    rows, total = sum(store.refusal_counts().values()), counted()
    started = time.monotonic()
    with httpx.Client(timeout=30) as http:
        answers = [http.post(v.url + "/v1/jobs", json={"template": "aggregate"}).status_code for _ in range(300)]
    elapsed = time.monotonic() - started
    assert answers == [403] * 300
    assert sum(store.refusal_counts().values()) - rows <= 20 + 5 * elapsed + 5  # kept: the burst and the rate
    assert counted() - total == 300  # counted: every one
