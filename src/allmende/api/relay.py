"""What the relay's two ends share (gateway.relay, provider.relay): the login text a provider
signs, which names the relay it dialled and its chain, so that no relay can replay it at
another."""

from __future__ import annotations

from urllib.parse import urlsplit


def challenge_text(nonce: str, relay: str, chain_id: int) -> str:
    """What a provider signs to log in: the nonce, the relay it dialled (`host:port`), its chain."""
    return f"allmende relay {nonce} at {relay} on chain {chain_id}"


def relay_name(url: str) -> str:
    """`host:port` of a relay URL (the default port of its scheme filled in), lower case."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


__all__ = ["challenge_text", "relay_name"]
