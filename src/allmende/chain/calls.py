"""Governance calls in people's words: build a proposal's calls from contract names,
function signatures and values, and decode any stored call back into them.

A voter reads what a proposal will execute, never a description the proposer wrote
about it: `decode_call` names the target contract (from the deployment), the function,
each parameter's name and value, and for `Params.set` the value it replaces. A call that
matches no ABI of the deployment is shown as raw bytes, marked undecoded.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError, EncodingError
from eth_utils import function_signature_to_4byte_selector, is_address, to_checksum_address

from allmende.chain.deployment import Deployment
from allmende.core.errors import InvalidInput


@dataclass(frozen=True)
class DecodedCall:
    """One call of a proposal, as a voter should read it."""

    target: str  # address
    contract: str  # deployment name ("Params"), or the address when it is none of ours
    function: str  # "set", or "" when the calldata matched no known function
    arguments: list[tuple[str, Any]] = field(default_factory=list)  # (parameter name, value)
    value: int = 0  # native currency sent along
    payload: bytes = b""

    @property
    def decoded(self) -> bool:
        return bool(self.function) or not self.payload

    def short(self) -> str:
        """`Params.set(protocol_fee_bps, 150)`: the form `gov list` shows."""
        if not self.payload:
            return f"send {self.value} wei to {self.contract}"
        if not self.function:
            return f"{self.contract}: UNDECODED 0x{self.payload.hex()}"
        args = ", ".join(_show(v) for _, v in self.arguments)
        sent = f" + {self.value} wei" if self.value else ""
        return f"{self.contract}.{self.function}({args}){sent}"

    def long(self) -> str:
        """`Params.set(name=protocol_fee_bps, new_value=150)`: the form `gov show` shows."""
        if not self.function:
            return self.short()
        args = ", ".join(f"{n}={_show(v)}" for n, v in self.arguments)
        sent = f" + {self.value} wei" if self.value else ""
        return f"{self.contract}.{self.function}({args}){sent}"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _functions(abi: list[dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
    out = {}
    for item in abi:
        if item.get("type") == "function":
            out[function_signature_to_4byte_selector(_signature(item))] = item
    return out


def _type(param: dict[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_type(c) for c in param["components"]) + ")" + kind[len("tuple") :]
    return kind


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(_type(p) for p in item['inputs'])})"


def decode_call(deployment: Deployment, target: str, value: int, payload: bytes) -> DecodedCall:
    """Name the contract, function and arguments of a call, from the deployment's ABIs."""
    names = {str(info["address"]).lower(): name for name, info in deployment.contracts.items()}
    name = names.get(target.lower(), to_checksum_address(target))
    if len(payload) < 4 or name not in deployment.contracts:
        return DecodedCall(to_checksum_address(target), name, "", [], value, payload)
    item = _functions(deployment.abi(name)).get(payload[:4])
    if item is None:
        return DecodedCall(to_checksum_address(target), name, "", [], value, payload)
    try:
        values = abi_decode([_type(p) for p in item["inputs"]], payload[4:])
    except (DecodingError, OverflowError, ValueError):
        return DecodedCall(to_checksum_address(target), name, "", [], value, payload)
    arguments = [(str(p["name"]), v) for p, v in zip(item["inputs"], values, strict=True)]
    return DecodedCall(to_checksum_address(target), name, str(item["name"]), arguments, value, payload)


def encode_call(deployment: Deployment, spec: str) -> tuple[str, int, bytes]:
    """A call from `TARGET FUNCTION ARG…`: TARGET is a contract of the deployment
    (`AllmendeToken`) or an address, FUNCTION a name of its ABI (`transfer`) or a
    signature (`transfer(address,uint256)`, needed for an address), each ARG a value in
    the parameter's type (integers in base units; lists as JSON, e.g. `[1,2]`)."""
    try:
        words = shlex.split(spec)  # a string argument with spaces goes in quotes
    except ValueError as exc:
        raise InvalidInput(f"--call {spec!r}: {exc}") from None
    if len(words) < 2:
        raise InvalidInput(f"--call expects 'TARGET FUNCTION ARG…', got {spec!r}")
    target_word, function, args = words[0], words[1], words[2:]
    if target_word in deployment.contracts:
        target, abi = deployment.address(target_word), deployment.abi(target_word)
    elif is_address(target_word):
        target, abi = to_checksum_address(target_word), []
    else:
        known = ", ".join(sorted(deployment.contracts))
        raise InvalidInput(f"call target {target_word!r} is neither an address nor one of {known}")
    if "(" in function:
        if not function.endswith(")"):
            raise InvalidInput(f"function signature {function!r} must look like transfer(address,uint256)")
        fname, types_part = function[:-1].split("(", 1)
        types = [t for t in types_part.split(",") if t]
    else:
        matches = [item for item in abi if item.get("type") == "function" and item["name"] == function]
        if not matches:
            raise InvalidInput(f"{target_word} has no function {function!r} (give a signature for an address)")
        if len(matches) > 1:
            raise InvalidInput(f"{target_word}.{function} is overloaded: give its full signature")
        fname, types = function, [_type(p) for p in matches[0]["inputs"]]
    if len(args) != len(types):
        raise InvalidInput(f"{fname}({','.join(types)}) takes {len(types)} arguments, got {len(args)}")
    values = [_parse(t, a) for t, a in zip(types, args, strict=True)]
    try:
        data = abi_encode(types, values)
    except (EncodingError, OverflowError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot encode {fname}({','.join(types)}) with {args}: {exc}") from None
    selector = function_signature_to_4byte_selector(f"{fname}({','.join(types)})")
    return target, 0, selector + data


def _parse(abi_type: str, word: str) -> Any:
    if abi_type.endswith("]"):
        try:
            items = json.loads(word)
        except json.JSONDecodeError:
            # the shell (and shlex) took the quotes: [0xab…,0xcd…] is still a flat list
            if not (word.startswith("[") and word.endswith("]")) or "[" in word[1:-1]:
                raise InvalidInput(f"{abi_type} argument {word!r} must be a JSON list, e.g. [1,2]") from None
            items = [w.strip() for w in word[1:-1].split(",") if w.strip()]
        if not isinstance(items, list):
            raise InvalidInput(f"{abi_type} argument {word!r} must be a JSON list")
        inner = abi_type[: abi_type.rindex("[")]
        return [_parse(inner, str(i).lower() if isinstance(i, bool) else str(i)) for i in items]
    if abi_type == "address":
        if not is_address(word):
            raise InvalidInput(f"{word!r} is not an address")
        return to_checksum_address(word)
    if abi_type.startswith(("uint", "int")):
        try:
            number = int(word.replace("_", ""), 0)
        except ValueError:
            raise InvalidInput(f"{abi_type} argument {word!r} is not an integer") from None
        return number
    if abi_type == "bool":
        if word.lower() not in ("true", "false"):
            raise InvalidInput(f"bool argument {word!r} must be true or false")
        return word.lower() == "true"
    if abi_type.startswith("bytes"):
        try:
            return bytes.fromhex(word.removeprefix("0x"))
        except ValueError:
            raise InvalidInput(f"{abi_type} argument {word!r} is not hex") from None
    if abi_type == "string":
        return word
    raise InvalidInput(f"parameter type {abi_type} is not supported on the command line")
