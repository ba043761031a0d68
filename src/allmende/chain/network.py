"""Joining a running network: where its contracts are, and whether they are Allmende's.

A node that joins with `--network URL` takes the chain id and the contract addresses from a
public endpoint — a gateway's `GET /v1/network` (`public_view` below) — or finds them on the
chain itself from the deployer's account (`find_on_chain`). Either way it trusts nothing it was
told before `verify_deployment` passed: the chain id is the RPC endpoint's, every address
holds the runtime code this version compiles from `contracts/` (plus its immutables), and the
contracts point at each other as `deploy_all` wired them, with the Timelock owning them. A
URL that names a contract of its own (say a "Registry" that would keep the stake it is
approved to pull) is refused before anything is signed.

The ABIs always come from the local compile, never from the network.
"""

from __future__ import annotations

from typing import Any

import httpx
import rlp
from eth_utils import keccak, to_checksum_address

from allmende.chain.client import ChainClient
from allmende.chain.compile import DEFAULT_EVM_VERSION, SUPPORTED_EVM_VERSIONS, compile_contract, evm_version_of
from allmende.chain.deployment import Deployment
from allmende.chain.errors import ChainError, DeploymentNotFound, RpcUnavailable
from allmende.chain.sources import SOURCES
from allmende.core.errors import InvalidInput

PUBLIC_PATH = "/v1/network"
REQUIRED = tuple(SOURCES)  # every contract deploy_all deploys
PAYMENT_TOKEN = "MockStable"  # the deployment's payment token: the devnet's mock or an existing ERC-20
MAX_NONCES = 5_000  # how far back find_on_chain walks the deployer's transactions


def public_view(deployment: Deployment, rpc_url: str | None = None) -> dict[str, Any]:
    """What a gateway publishes at /v1/network: addresses, no ABIs (a joiner compiles its own)."""
    return {
        "chain_id": deployment.chain_id,
        "rpc_url": rpc_url or deployment.rpc_url,
        "deploy_block": deployment.deploy_block,
        "deployer": deployment.deployer,
        "treasury": deployment.treasury,
        "devnet": deployment.devnet,
        "evm_version": deployment.evm_version,
        "contracts": {name: info["address"] for name, info in deployment.contracts.items()},
    }


def base_url(url: str) -> str:
    """`http://host:8000/v1/` → `http://host:8000`."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/v1")


def resolve_network(url: str, rpc: str | None = None, deployer: str | None = None) -> Deployment:
    """A gateway's URL or a chain's JSON-RPC URL → a deployment checked by `verify_deployment`.
    `rpc` overrides the chain endpoint a gateway advertises (it may be 127.0.0.1 on its host)."""
    if not url.startswith(("http://", "https://")):
        raise DeploymentNotFound(f"--network {url!r}: expected an http:// or https:// URL")
    announced, unreachable = _fetch_public(base_url(url))
    if announced is None and unreachable is not None:
        raise DeploymentNotFound(unreachable)
    if announced is not None:
        deployment = from_public(announced, rpc)
        where = f"the gateway at {base_url(url)}"
    else:
        if _chain_id_at(url) is None:
            raise DeploymentNotFound(
                f"{url} is neither an Allmende gateway (GET {PUBLIC_PATH}) nor a JSON-RPC endpoint (eth_chainId)"
            )
        deployment = find_on_chain(ChainClient(url), deployer)
        where = f"the chain at {url}"
    client = ChainClient(deployment.rpc_url)
    try:
        verify_deployment(client, deployment)
    except RpcUnavailable:
        raise RpcUnavailable(
            f"the chain endpoint {deployment.rpc_url} (from {where}) is unreachable from here: "
            "pass --rpc with a chain URL this host can reach"
        ) from None
    return deployment


def _fetch_public(base: str) -> tuple[dict[str, Any] | None, str | None]:
    """(what the gateway publishes, None), or (None, why nothing answers at all) — which is a
    newcomer's first error on a second host, and says more than "not a gateway"."""
    try:
        reply = httpx.get(base + PUBLIC_PATH, timeout=10)
        data = reply.json() if reply.status_code == 200 else None
    except ValueError:
        return None, None
    except httpx.TimeoutException:
        return None, (
            f"no answer from {base} within 10 s: a firewall may drop the packets, or the address is not this "
            "network's (check the URL and that the gateway's port is open to this host)"
        )
    except httpx.ConnectError as exc:
        return None, _connect_advice(base, exc)
    except httpx.HTTPError:
        return None, None
    return (data if isinstance(data, dict) and "contracts" in data else None), None


def _connect_advice(base: str, exc: httpx.ConnectError) -> str:
    text = str(exc)
    if base.startswith("https://") and ("SSL" in text or "ssl" in text or "TLS" in text):
        return (
            f"the TLS handshake with {base} failed ({text}): if the gateway serves plain HTTP, use "
            f"{base.replace('https://', 'http://', 1)}"
        )
    return (
        f"nothing answers at {base} ({text or exc.__class__.__name__}): check the URL (a gateway's or the "
        "chain's), that the node there listens beyond its own host (`allmende up --public-host ADDRESS`, "
        "`allmende gateway --host 0.0.0.0`), and that a firewall lets this host reach its port"
    )


def _chain_id_at(url: str) -> int | None:
    try:
        reply = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=10)
        return int(reply.json()["result"], 16)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def from_public(data: dict[str, Any], rpc: str | None = None) -> Deployment:
    """A deployment from a gateway's /v1/network answer (shape-checked; not yet verified)."""
    try:
        contracts = data["contracts"]
        if not isinstance(contracts, dict):
            raise TypeError("contracts is not an object")
        missing = [name for name in REQUIRED if name not in contracts]
        if missing:
            raise KeyError(f"contracts lack {', '.join(missing)}")
        addresses = {name: to_checksum_address(str(contracts[name])) for name in REQUIRED}
        evm = evm_version_of(str(data.get("evm_version") or "") or None)
        deployment = Deployment(
            chain_id=int(data["chain_id"]),
            rpc_url=rpc or str(data["rpc_url"]),
            deploy_block=max(0, int(data.get("deploy_block", 0))),
            deployer=to_checksum_address(str(data["deployer"])),
            treasury=to_checksum_address(str(data["treasury"])),
            devnet=bool(data.get("devnet", False)),
            contracts={name: {"address": a, "abi": compile_contract(name, evm).abi} for name, a in addresses.items()},
            evm_version=evm,
        )
    except (KeyError, TypeError, ValueError, InvalidInput) as exc:
        raise DeploymentNotFound(f"the network description is malformed: {exc}") from None
    return deployment


def verify_deployment(client: ChainClient, deployment: Deployment) -> None:
    """Refuse (DeploymentNotFound) unless `deployment` is a genuine, consistently wired Allmende
    deployment on the chain `client` talks to."""
    chain_id = client.chain_id
    if chain_id != deployment.chain_id:
        raise DeploymentNotFound(
            f"chain id mismatch: the network says {deployment.chain_id}, {client.rpc_url} is chain {chain_id}"
        )
    evm = deployment.evm_version or None
    for name in REQUIRED:
        address = deployment.address(name)
        code = bytes(client.rpc(lambda a=address: client.w3.eth.get_code(to_checksum_address(a))))  # type: ignore[misc]
        if not code:
            raise DeploymentNotFound(f"{name} at {address}: no contract there on chain {chain_id}")
        if name == PAYMENT_TOKEN and not deployment.devnet:
            continue  # an existing ERC-20: bound below by the verified Channels' payment_token()
        if not code.startswith(bytes.fromhex(compile_contract(name, evm).runtime.removeprefix("0x"))):
            raise DeploymentNotFound(f"{name} at {address}: the code there is not this version's {name}")
    for contract, getter, target in _WIRING:
        actual = _read_address(client, deployment, contract, getter)
        expected = deployment.address(target)
        if actual.lower() != expected.lower():
            raise DeploymentNotFound(
                f"{contract}.{getter}() is {actual}, not the {target} the network names ({expected}): "
                "these contracts do not belong together"
            )


# (contract, getter, contract its answer must be): the links deploy_all makes and hands over
_WIRING = [
    ("Registry", "stake_token", "AllmendeToken"),
    ("Registry", "params", "Params"),
    ("Registry", "verdicts", "Verdicts"),
    ("Registry", "owner", "Timelock"),
    ("Params", "owner", "Timelock"),
    ("Models", "registry", "Registry"),
    ("Models", "params", "Params"),
    ("Channels", "payment_token", "MockStable"),
    ("Channels", "params", "Params"),
    ("Channels", "models", "Models"),
    ("Channels", "owner", "Timelock"),
    ("Verdicts", "stake_token", "AllmendeToken"),
    ("Verdicts", "registry", "Registry"),
    ("Verdicts", "params", "Params"),
    ("Governor", "registry", "Registry"),
    ("Governor", "timelock", "Timelock"),
    ("Data", "registry", "Registry"),
]


def _read_address(client: ChainClient, deployment: Deployment, name: str, getter: str) -> str:
    contract = client.contract(deployment.address(name), deployment.abi(name))
    return str(client.call(getattr(contract.functions, getter)()))


def create_address(sender: str, nonce: int) -> str:
    """The address a CREATE from `sender` with `nonce` deploys to."""
    return to_checksum_address(keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:])


def find_on_chain(client: ChainClient, deployer: str | None = None) -> Deployment:
    """The newest complete deployment made by `deployer` (on a devnet: anvil's account 0),
    found by walking its CREATE addresses and recognising each contract by its code."""
    from allmende.chain.anvil import DEVNET_CHAIN_ID, devnet_accounts, is_devnet_chain

    chain_id = client.chain_id
    if deployer is None:
        if chain_id != DEVNET_CHAIN_ID:
            raise DeploymentNotFound(
                f"chain {chain_id} is not a devnet: pass the deployer's address (--deployer) or a gateway's URL"
            )
        deployer = devnet_accounts(1)[0].address
    deployer = to_checksum_address(deployer)
    nonce = int(client.rpc(lambda: client.w3.eth.get_transaction_count(deployer)))
    codes: list[tuple[str, bytes]] = []  # newest first
    for n in range(nonce - 1, max(-1, nonce - 1 - MAX_NONCES), -1):
        address = create_address(deployer, n)
        codes.append((address, bytes(client.rpc(lambda a=address: client.w3.eth.get_code(a)))))  # type: ignore[misc]
    # the contracts may be compiled for any EVM version: the default first, then the others
    versions = [DEFAULT_EVM_VERSION, *(v for v in reversed(SUPPORTED_EVM_VERSIONS) if v != DEFAULT_EVM_VERSION)]
    for evm in versions:
        registry_code = bytes.fromhex(compile_contract("Registry", evm).runtime.removeprefix("0x"))
        if any(code and code.startswith(registry_code) for _, code in codes):
            break
    else:
        raise DeploymentNotFound(f"no Allmende deployment by {deployer} on chain {chain_id}")
    runtimes = {name: bytes.fromhex(compile_contract(name, evm).runtime.removeprefix("0x")) for name in REQUIRED}
    found: dict[str, list[str]] = {name: [] for name in REQUIRED}  # newest first
    for address, code in codes:
        for name, runtime in runtimes.items():
            if code and code.startswith(runtime):
                found[name].append(address)
                break
    # the newest Registry, and of every other contract the newest one wired to it
    registry = found["Registry"][0]
    stub = Deployment(chain_id, client.rpc_url, 0, deployer, "", True, {}, evm_version=evm)
    for name in REQUIRED:
        newest = found[name][0] if found[name] else registry
        stub.contracts[name] = {"address": newest, "abi": compile_contract(name, evm).abi}
    stub.contracts["Registry"]["address"] = registry
    for contract, getter, target in _WIRING:  # follow the links out of the Registry first
        if contract == "Registry" and getter != "owner":
            stub.contracts[target]["address"] = _read_address(client, stub, contract, getter)
    stub.contracts["Timelock"]["address"] = _read_address(client, stub, "Registry", "owner")
    for name in ("Models", "Channels", "Governor", "Data"):
        for candidate in found[name]:
            stub.contracts[name]["address"] = candidate
            if _read_address(client, stub, name, "registry" if name != "Channels" else "models") == (
                registry if name != "Channels" else stub.address("Models")
            ):
                break
    payment = _read_address(client, stub, "Channels", "payment_token")
    stub.contracts["MockStable"]["address"] = payment
    # a devnet pays with the mock token on a devnet chain id; anything else is a real network
    payment_code = bytes(client.rpc(lambda: client.w3.eth.get_code(to_checksum_address(payment))))
    stub.devnet = is_devnet_chain(chain_id) and payment_code.startswith(runtimes[PAYMENT_TOKEN])
    stub.treasury = _read_address(client, stub, "Channels", "treasury")
    stub.deploy_block = _creation_block(client, stub.address("AllmendeToken"))
    return stub


def _creation_block(client: ChainClient, address: str) -> int:
    """The first block where `address` holds code (binary search; 0 where history is pruned)."""
    try:
        low, high = 0, client.block_number()
        while low < high:
            middle = (low + high) // 2
            if client.rpc(lambda m=middle: client.w3.eth.get_code(to_checksum_address(address), m)):  # type: ignore[misc]
                high = middle
            else:
                low = middle + 1
        return low
    except (ChainError, ValueError):
        return 0
