"""A Python client of the provider API: seals requests, signs them with the payer's key,
attaches vouchers, opens answers and checks every receipt's signature. The gateway and
the tests use it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

from allmende.api.protocol import input_hash
from allmende.api.upstream import HttpxUpstream, Upstream
from allmende.core import Domain, InvalidSignature, RequestAuthorization, SignedReceipt, SignedVoucher
from allmende.core.envelope import ResponseSealer, seal_request
from allmende.core.errors import UpstreamError

# the credit a provider whose /v1/info names none is assumed to allow (the old default)
DEFAULT_CREDIT_LIMIT = 50_000


class ProviderReplyError(UpstreamError):
    """The provider answered with a JSON error (its status and code are kept). A stream that
    failed after some text went out carries the provider's receipt for that text in `cut`
    (checked like any receipt): the provider bills what it sent."""

    def __init__(
        self, status: int, code: str, message: str, cut: Answer | None = None, param: str | None = None
    ) -> None:
        self.status, self.code, self.message, self.cut, self.param = status, code, message, cut, param
        super().__init__(f"{status} {code}: {message}")


@dataclass(frozen=True)
class PayerKey:
    """The key a payer signs requests and vouchers with, and its Channels domain."""

    key: bytes
    domain: Domain  # Channels' EIP-712 domain (vouchers and request signatures)

    @property
    def address(self) -> str:
        return str(Account.from_key(self.key).address)


@dataclass(frozen=True)
class ProviderInfo:
    address: str
    x25519_key: bytes
    chain_id: int
    models: list[dict[str, Any]]
    raw: dict[str, Any]

    @property
    def credit_limit(self) -> int:
        """The credit the provider gives a payer (units owed beyond its last voucher), as its
        signed /v1/info publishes it; DEFAULT_CREDIT_LIMIT where it names none it can mean."""
        raw = self.raw.get("credit_limit", DEFAULT_CREDIT_LIMIT)
        try:
            return int(raw)
        except (TypeError, ValueError):
            return DEFAULT_CREDIT_LIMIT


class Delta(str):
    """A piece of streamed text; `tokens` is how many generated tokens it carries (a
    token may complete a character only later, so a delta can hold several)."""

    tokens: int
    logprobs: list[dict[str, Any]] | None  # of those tokens, when the request asked for them

    def __new__(cls, text: str, tokens: int = 1, logprobs: list[dict[str, Any]] | None = None) -> Delta:
        delta = super().__new__(cls, text)
        delta.tokens = tokens
        delta.logprobs = logprobs
        return delta


@dataclass
class Answer:
    output: dict[str, Any]
    usage: dict[str, int]
    receipt: SignedReceipt
    sent: dict[str, Any] | None = None  # the request body as sent to the provider (set by the gateway)


INFO_DEADLINE = 10.0  # seconds for a provider's whole /v1/info (not per read)
MAX_INFO = 256 * 1024  # bytes


def fetch_info(http: httpx.Client, url: str, deadline: float = INFO_DEADLINE) -> ProviderInfo:
    """GET /v1/info and check that the provider key signed it. The whole answer must arrive
    within `deadline` seconds and MAX_INFO bytes (httpx's timeouts are per read: a provider
    that drips a byte every few seconds held the directory's refresh for as long as it liked);
    else httpx.ReadTimeout."""
    ends = time.monotonic() + deadline
    raw = bytearray()
    with http.stream("GET", f"{url}/v1/info") as reply:
        reply.raise_for_status()
        for chunk in reply.iter_bytes():
            raw += chunk
            if len(raw) > MAX_INFO or time.monotonic() > ends:
                raise httpx.ReadTimeout(f"/v1/info of {url} is too slow or too large", request=reply.request)
    body = json.loads(raw)
    info = body["info"]
    signer = Account.recover_message(encode_defunct(text=body["signed"]), signature=body["signature"])
    if json.loads(body["signed"]) != info or signer != info["address"]:
        raise InvalidSignature(f"/v1/info of {url} is not signed by {info.get('address')}")
    return ProviderInfo(info["address"], bytes.fromhex(info["x25519_key"][2:]), info["chain_id"], info["models"], info)


def build_envelope(
    info: ProviderInfo,
    model_id: bytes,
    kind: str,
    body: dict[str, Any],
    payer: PayerKey,
    channel_id: bytes,
    voucher: SignedVoucher | None,
    request_id: bytes | None = None,
    body_hash: bytes | None = None,
) -> tuple[bytes, dict[str, str], ResponseSealer]:
    """Seal a request to the provider, signed by the payer: `Request(requestId, channelId,
    modelId, inputHash)` (core.authorization), which the provider requires to recover to the
    channel's payer. `body_hash`: `input_hash(kind, body)` where the caller has it already.
    Returns (request id, envelope, the sealer that opens the answer)."""
    request_id = request_id or os.urandom(32)
    body_hash = body_hash or input_hash(kind, body)
    authorization = RequestAuthorization(request_id, channel_id, model_id, body_hash)
    plaintext = {
        "request_id": "0x" + request_id.hex(),
        "model_id": "0x" + model_id.hex(),
        "kind": kind,
        "body": body,
        "channel_id": "0x" + channel_id.hex(),
        "voucher": voucher.to_json() if voucher else None,
        "signature": "0x" + authorization.sign(payer.domain, payer.key).hex(),
    }
    envelope, sealer = seal_request(info.x25519_key, info.address, request_id, json.dumps(plaintext).encode())
    return request_id, envelope, sealer


def _decoded(raw: bytes | str) -> Any:
    """A provider's JSON (a reply nested deeper than allmende.MAX_RECURSION is no reply:
    ProviderReplyError, so the gateway fails over as from any broken provider)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProviderReplyError(502, "bad_reply", "the provider's reply is not JSON") from None


def _raise_for(reply: httpx.Response) -> None:
    _raise_for_status(reply.status_code, reply.content)


def _raise_for_status(status: int, content: bytes) -> None:
    """ProviderReplyError for an error reply (the provider's own code, or its first bytes)."""
    if status >= 400:
        try:
            err = json.loads(content)["error"]
            param = err.get("param")
            param = param if isinstance(param, str) else None
            raise ProviderReplyError(status, err["code"], err["message"], param=param)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            text = content[:200].decode(errors="replace")
            raise ProviderReplyError(status, "http_error", text) from None


def _check_receipt(raw: dict[str, Any], info: ProviderInfo, domain: Domain, request_id: bytes) -> SignedReceipt:
    receipt = SignedReceipt.from_json(raw)
    receipt.verify(domain)
    if receipt.receipt.provider != info.address or receipt.receipt.request_id != request_id:
        raise InvalidSignature("receipt is for another provider or request")
    return receipt


def infer(
    http: httpx.Client,
    url: str,
    info: ProviderInfo,
    receipt_domain: Domain,
    envelope: dict[str, str],
    sealer: ResponseSealer,
    request_id: bytes,
) -> Answer:
    reply = http.post(f"{url}/v1/infer", json=envelope)
    _raise_for(reply)
    data = _decoded(sealer.open(_decoded(reply.content), 0))
    return Answer(data["output"], data["usage"], _check_receipt(data["receipt"], info, receipt_domain, request_id))


class _StreamReader:
    """Turns the provider's SSE lines into text deltas and one final, checked Answer."""

    def __init__(self, info: ProviderInfo, receipt_domain: Domain, sealer: ResponseSealer, request_id: bytes):
        self.info, self.receipt_domain, self.sealer, self.request_id = info, receipt_domain, sealer, request_id
        self.seq, self.event = 0, "message"
        self.parts: list[str] = []  # the text streamed so far: the Answer's text
        self.cut: Answer | None = None  # the receipt of a stream that failed after sending text

    def feed(self, line: str) -> Delta | Answer | None:
        if line.startswith("event:"):
            self.event = line[6:].strip()
            return None
        if not line.startswith("data:"):
            return None
        payload = _decoded(line[5:])
        if self.event == "error":
            err = payload["error"]
            raise ProviderReplyError(500, err["code"], err["message"], self.cut)
        data = _decoded(self.sealer.open(payload, self.seq))
        self.seq += 1
        if data.get("done") and data.get("cut"):  # the error follows; its receipt goes with it
            ids = data.get("token_ids", [])
            output = {"text": "".join(self.parts), "finish_reason": "error", "token_ids": ids, "proof": "0x"}
            receipt = _check_receipt(data["receipt"], self.info, self.receipt_domain, self.request_id)
            self.cut = Answer(output, data["usage"], receipt)
            return None
        if data.get("done"):
            output = {
                "text": "".join(self.parts),
                "finish_reason": data["finish_reason"],
                "token_ids": data.get("token_ids", []),
                "proof": data.get("proof", "0x"),
            }
            if isinstance(data.get("logprobs"), list):
                output["logprobs"] = data["logprobs"]  # of tokens no delta carried
            receipt = _check_receipt(data["receipt"], self.info, self.receipt_domain, self.request_id)
            return Answer(output, data["usage"], receipt)
        tokens = data.get("tokens", 1)
        self.parts.append(str(data["delta"]))
        logprobs = data.get("logprobs")
        return Delta(
            str(data["delta"]),
            tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 1,
            logprobs if isinstance(logprobs, list) else None,
        )


def infer_stream(
    http: httpx.Client,
    url: str,
    info: ProviderInfo,
    receipt_domain: Domain,
    envelope: dict[str, str],
    sealer: ResponseSealer,
    request_id: bytes,
) -> Iterator[Delta | Answer]:
    """Yields text deltas, then one Answer with usage and the checked receipt."""
    reader = _StreamReader(info, receipt_domain, sealer, request_id)
    with http.stream("POST", f"{url}/v1/infer", json=envelope) as reply:
        if reply.status_code >= 400:
            reply.read()
            _raise_for(reply)
        for line in reply.iter_lines():
            item = reader.feed(line)
            if item is not None:
                yield item
                if isinstance(item, Answer):
                    return
    raise ProviderReplyError(502, "stream_cut", "stream ended before the final chunk", reader.cut)


def _upstream(http: httpx.AsyncClient | Upstream) -> Upstream:
    return http if isinstance(http, Upstream) else HttpxUpstream(http)


async def ainfer(
    http: httpx.AsyncClient | Upstream,
    url: str,
    info: ProviderInfo,
    receipt_domain: Domain,
    envelope: dict[str, str],
    sealer: ResponseSealer,
    request_id: bytes,
) -> Answer:
    """`infer` for asyncio callers (`http`: an httpx client, or the gateway's Upstream)."""
    status, content = await _upstream(http).post(f"{url}/v1/infer", envelope)
    _raise_for_status(status, content)
    data = _decoded(sealer.open(_decoded(content), 0))
    return Answer(data["output"], data["usage"], _check_receipt(data["receipt"], info, receipt_domain, request_id))


async def ainfer_stream(
    http: httpx.AsyncClient | Upstream,
    url: str,
    info: ProviderInfo,
    receipt_domain: Domain,
    envelope: dict[str, str],
    sealer: ResponseSealer,
    request_id: bytes,
) -> AsyncIterator[Delta | Answer]:
    """`infer_stream` for asyncio callers: text deltas, then one Answer."""
    reader = _StreamReader(info, receipt_domain, sealer, request_id)
    async with _upstream(http).stream(f"{url}/v1/infer", envelope) as (status, lines):
        if status >= 400:
            _raise_for_status(status, "\n".join([line async for line in lines]).encode())
        async for line in lines:
            item = reader.feed(line)
            if item is not None:
                yield item
                if isinstance(item, Answer):
                    return
    raise ProviderReplyError(502, "stream_cut", "stream ended before the final chunk", reader.cut)
