"""A node's listening socket."""

from __future__ import annotations

import socket

from allmende.core.errors import InvalidInput


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen on host:port now, before anything is staked or registered: a busy port stops the
    start here, with nothing on chain."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror} (another node there? use --port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
