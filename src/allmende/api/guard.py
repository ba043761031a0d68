"""Who may call a node's HTTP API, decided before any work is done: the `Host`, `Origin` and
`Content-Type` rules every role's server applies (`Guard`, an ASGI middleware configured by a
`GuardConfig`; `protect` installs it).

A node on a user's machine — a gateway above all, which pays providers from its own key — is
reachable by every web page the user opens:

- A *simple* cross-site request (`text/plain`, a form, `fetch(…, {mode: "no-cors"})`) is sent
  by the browser without asking the server first (no CORS preflight): the page cannot read
  the answer, but it is served, and paid for. Bodies must be of the node's media type (JSON),
  which a page can only send after a preflight; anything else is 415 `unsupported_media_type`.
- Every cross-origin request a browser sends, other than a plain GET or HEAD, carries the
  page's `Origin`. One that is neither the node's own (the same host and port as `Host`) nor
  allowed by the operator (`--allow-origin`) is refused, preflights included: 403
  `origin_not_allowed`.
- A DNS-rebinding page (a name of the attacker's that resolves to 127.0.0.1 once the page is
  loaded) is same-origin with the node, so CORS does not stop it; but the browser sends the
  page's name as `Host`. Only the node's own names are served: loopback (localhost,
  *.localhost, 127.0.0.0/8, ::1), the bind address, the public URL's host and what the
  operator adds (`--allowed-host`); anything else is 403 `host_not_allowed`. A node bound to
  every interface (0.0.0.0, ::) also serves any IP-literal `Host`: it is reached at addresses
  it cannot list, and an IP literal cannot be rebound.
- A request without `Host` (HTTP/1.0 tools, the relay's forwarded requests) or without
  `Origin` does not come from a browser page; the other rules still apply.

Only allowed origins get CORS answers: a preflight (`OPTIONS` with
`Access-Control-Request-Method`) is answered 204 with Access-Control-Allow-Origin, -Methods,
-Headers and `Vary: Origin`, and their answers carry Access-Control-Allow-Origin. WebSocket
handshakes (the relay's) get the same Host and Origin checks; a refused one is closed before
it is accepted (403).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from allmende.api import wire
from allmende.core.errors import HostNotAllowed, OriginNotAllowed, RequestRefused, UnsupportedMediaType

log = logging.getLogger("allmende.api.guard")

JSON = "application/json"
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "authorization, content-type"  # besides those a preflight asks for
PREFLIGHT_MAX_AGE = "600"  # seconds a browser may keep a preflight's answer


def host_name(value: str) -> str:
    """The name or address in a `Host` header, a URL or `host[:port]`: lower case, without
    port, brackets or trailing dot."""
    value = value.strip().lower()
    if "://" in value:
        value = urlsplit(value).netloc.rpartition("@")[2]
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") > 1:  # a bare IPv6 address
        return value
    return value.partition(":")[0].rstrip(".")


def ip_of(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback(name: str) -> bool:
    """localhost and its subdomains (browsers resolve them to loopback themselves), 127.0.0.0/8, ::1."""
    ip = ip_of(name)
    return name == "localhost" or name.endswith(".localhost") or (ip is not None and ip.is_loopback)


def normal_origin(value: str) -> str:
    return value.strip().lower().rstrip("/")


@dataclass(frozen=True)
class GuardConfig:
    """What a node serves; build it with `serving` from the node's own addresses."""

    # names and addresses served besides loopback (no port: any port); "*.example.org" = its subdomains
    hosts: frozenset[str] = frozenset()
    # also serve any IP-literal Host (a node listening on every interface)
    any_ip: bool = False
    # origins (scheme://host[:port]) whose pages may call the API, with CORS answers; "*" = any origin
    origins: frozenset[str] = frozenset()
    # media types a request body may have (POST, PUT, PATCH, DELETE); None = not checked
    content_types: frozenset[str] | None = frozenset({JSON})

    @classmethod
    def serving(
        cls,
        bind_host: str,
        public: Iterable[str | None] = (),
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        content_types: frozenset[str] | None = frozenset({JSON}),
    ) -> GuardConfig:
        """A node listening on `bind_host`, reached at `public` URLs or host names, plus the
        operator's `allowed_hosts` and `allowed_origins`."""
        names = {host_name(h) for h in (bind_host, *public, *allowed_hosts) if h} - WILDCARD_HOSTS
        return cls(
            hosts=frozenset(names),
            any_ip=host_name(bind_host) in WILDCARD_HOSTS,
            origins=frozenset(normal_origin(o) for o in allowed_origins),
            content_types=content_types,
        )

    def host_allowed(self, host: str | None) -> bool:
        if host is None:
            return True  # no browser sends a request without Host
        return _host_allowed(self, host)

    def cors_allowed(self, origin: str) -> bool:
        """An origin the operator allowed: its pages may call the API and get CORS answers."""
        return "*" in self.origins or normal_origin(origin) in self.origins

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Allowed by the operator, or the node's own origin (a page it served, such as the explorer)."""
        if self.cors_allowed(origin):
            return True
        parts = urlsplit(normal_origin(origin))
        return parts.scheme in ("http", "https") and host is not None and parts.netloc == host.strip().lower()

    def refusal(self, method: str, headers: Headers) -> RequestRefused | None:
        """Why a request with these headers is refused, or None."""
        host, origin = headers.get("host"), headers.get("origin")
        if not self.host_allowed(host):
            return HostNotAllowed(
                f"the Host {host!r} is not a name of this node: start it with --allowed-host "
                f"{host_name(host or '')} if it is (a page under another name may be a DNS-rebinding attack)"
            )
        if origin is not None and not self.origin_allowed(origin, host):
            return OriginNotAllowed(
                f"requests from web pages on {origin} are refused (a gateway started with --allow-origin {origin} "
                "lets that web app call it)"
            )
        if method in BODY_METHODS and self.content_types is not None:
            declared = headers.get("content-type")
            media = (declared or "").partition(";")[0].strip().lower()
            if media not in self.content_types:
                wanted = " or ".join(sorted(self.content_types))
                return UnsupportedMediaType(
                    f"the request body must be sent with Content-Type: {wanted} (not {declared or 'none'})"
                )
        return None


@lru_cache(maxsize=1024)
def _host_allowed(config: GuardConfig, host: str) -> bool:
    """`config.host_allowed(host)`, kept per (config, Host): a node is called under the same
    few names all day, and parsing one as an IP address cost more than the rest of the
    guard's checks on every request (a bounded cache: Host is the caller's to choose)."""
    name = host_name(host)
    if is_loopback(name) or name in config.hosts or (config.any_ip and ip_of(name) is not None):
        return True
    return any(h.startswith("*.") and name.endswith(h[1:]) for h in config.hosts)


class Guard:
    """ASGI middleware: refuses what `GuardConfig.refusal` names, rendered by `render` (each
    role's one error renderer), and answers allowed origins' CORS."""

    def __init__(
        self, app: ASGIApp, config: GuardConfig, render: Callable[[Exception], Response] = wire.error_response
    ) -> None:
        self.app, self.config, self.render = app, config, render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope.get("method", "GET")
        origin = headers.get("origin")
        cors = scope["type"] == "http" and origin is not None and self.config.cors_allowed(origin)

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer = MutableHeaders(scope=message)
                answer["access-control-allow-origin"] = origin or ""
                answer.add_vary_header("Origin")
            await send(message)

        refused = self.config.refusal(method, headers)
        if refused is not None:
            log.warning("refused %s %s: %s", method, scope.get("path"), refused)
            if scope["type"] == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008})  # before the handshake: 403
            else:  # an allowed web app may read why
                await self.render(refused)(scope, receive, send_with_cors if cors else send)
            return
        if not cors:
            await self.app(scope, receive, send)
        elif method == "OPTIONS" and "access-control-request-method" in headers:
            await self.preflight(origin or "", headers)(scope, receive, send)
        else:
            await self.app(scope, receive, send_with_cors)

    def preflight(self, origin: str, headers: Headers) -> Response:
        asked = headers.get("access-control-request-headers", "")
        allowed = ", ".join(dict.fromkeys(h.strip().lower() for h in f"{CORS_HEADERS},{asked}".split(",") if h.strip()))
        return Response(
            status_code=204,
            headers={
                "access-control-allow-origin": origin,
                "access-control-allow-methods": CORS_METHODS,
                "access-control-allow-headers": allowed,
                "access-control-max-age": PREFLIGHT_MAX_AGE,
                "vary": "Origin",
            },
        )


def protect(app: Starlette, config: GuardConfig | None, render: Callable[[Exception], Response] | None = None) -> None:
    """Install the guard on a Starlette/FastAPI app (outside its routes and handlers), if configured."""
    if config is not None:
        app.add_middleware(Guard, config=config, render=render or wire.error_response)
