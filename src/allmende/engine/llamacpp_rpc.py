"""One operator's hosts as one provider: llama.cpp's RPC backend (`ggml-rpc-server` on each host).

The RPC backend exposes another host's ggml device (its CPU, or its GPUs) over TCP; a
llama.cpp process that adds the host's `ggml-rpc-server` as a device can hold some of a
model's layers there, with their KV cache, and runs each forward pass across its own CPU and
those devices (the graph is split per device; activations cross the network at each split).
The provider stays one provider on chain: the same model id, offers, proofs and receipts,
because the same weights compute the same rows (the logits and final hidden states come back
to this process, where the draw and the proof are made as for a local model).

How a client adds a server (llama.cpp's own `--rpc` does the same): the backend registry's
"RPC" entry hands out `ggml_backend_rpc_add_server` through its proc address; that returns a
registry of the server's devices, which go into `llama_model_params.devices` (a NULL-terminated
array). They are not registered globally, so a model loaded without RPC in the same process
never lands on them.

Failure: ggml's RPC client has no error path and no timeout. A server that cannot be reached, or that dies
mid-step, ends in `ggml_abort`, which aborts the process. So each server is probed here first
(a TCP connect and the protocol's HELLO, with a timeout), which turns an unreachable server or
a wrong version into an `EngineError` before llama.cpp connects; and an abort callback
catches the aborts raised in ggml-rpc.cpp while serving: it fails every request of the engines
that use RPC with `RpcServerLost` (a JSON 503 the gateway fails over on) and parks the thread
that aborted instead of returning (returning would abort the process). The engine stays lost
until the provider restarts; requests after the loss fail at once. A host that vanishes
without closing its connections (power, cable) would leave llama.cpp waiting forever: once
connected, its sockets (found in /proc) get TCP keepalive and TCP_USER_TIMEOUT, so the kernel
breaks such a connection within `SILENCE_S` seconds, which ends in the same abort.

The RPC traffic is neither encrypted nor authenticated (llama.cpp: "never run the RPC server
on an open network"): this is for one operator's hosts on a trusted LAN. Providers that do not
trust each other split a model into pipeline stages instead (`allmende.engine.stages`).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import shutil
import socket
import struct
import threading
import weakref
from pathlib import Path
from typing import Any, Protocol

from allmende.engine.base import EngineError

PROTO_MAJOR = 7  # RPC_PROTO_MAJOR_VERSION of ggml-rpc.h in the pinned llama.cpp
PROTO_MINOR = 0
CMD_HELLO = 14  # RPC_CMD_HELLO (fixed across versions)
CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE: the HELLO request and response carry this many capability bytes
PROBE_TIMEOUT_S = 10.0
# a server's host that vanishes without closing its connections (power, cable, a partition) is
# noticed within about this many seconds: TCP keepalive and TCP_USER_TIMEOUT on llama.cpp's sockets
SILENCE_S = 10
RPC_SOURCE = "ggml-rpc.cpp"  # the file an RPC failure's abort message names
SERVER_TARGET = "ggml-rpc-server"  # the cmake target (and binary) of llama.cpp's tools/rpc


class RpcServerLost(EngineError):
    """A llama.cpp RPC server this provider's model runs on was lost (it died, or the network
    to it broke): the request fails, and so does every later one until the provider restarts
    with its servers back. A 503, so the gateway tries another provider."""

    code = "rpc_server_lost"
    status = 503


def parse_endpoints(text: str) -> tuple[str, ...]:
    """'host:port,host:port' → the endpoints, checked (EngineError naming the bad one)."""
    endpoints = tuple(part.strip() for part in text.split(",") if part.strip())
    if not endpoints:
        raise EngineError("--llamacpp-rpc needs at least one HOST:PORT of a ggml-rpc-server")
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EngineError(f"llama.cpp RPC server {endpoint!r} is not HOST:PORT (e.g. 192.168.1.20:50052)")
    if len(set(endpoints)) != len(endpoints):
        raise EngineError(f"llama.cpp RPC servers are given twice: {text!r}")
    return endpoints


def configured_endpoints(given: str | None = None) -> tuple[str, ...]:
    """The RPC servers to use: `given`, else $ALLMENDE_LLAMACPP_RPC, else none."""
    text = given or os.environ.get("ALLMENDE_LLAMACPP_RPC") or ""
    return parse_endpoints(text) if text.strip() else ()


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int, int, int]:
    """Connect to a ggml-rpc-server and say HELLO; its protocol version (major, minor, patch),
    or EngineError saying why not. A server serves one client at a time: one busy with another
    client does not answer within `timeout`."""
    host, _, port = endpoint.rpartition(":")
    request = struct.pack("<BQ", CMD_HELLO, CONN_CAPS) + bytes(CONN_CAPS)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(request)
            size = struct.unpack("<Q", _receive(sock, 8))[0]
            if size != 4 + CONN_CAPS:
                raise EngineError(f"{endpoint} is not a ggml-rpc-server of this llama.cpp (HELLO got {size} bytes)")
            major, minor, patch = _receive(sock, size)[:3]
    except TimeoutError:
        raise EngineError(
            f"llama.cpp RPC server {endpoint} did not answer within {timeout:.0f} s "
            "(it serves one client at a time: is another process using it?)"
        ) from None
    except OSError as exc:
        raise EngineError(f"llama.cpp RPC server {endpoint} cannot be reached: {exc.strerror or exc}") from None
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        raise EngineError(
            f"llama.cpp RPC server {endpoint} speaks protocol {major}.{minor}.{patch}, this binding "
            f"{PROTO_MAJOR}.{PROTO_MINOR}: build its ggml-rpc-server from the same llama.cpp (make install does)"
        )
    return major, minor, patch


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EngineError("the llama.cpp RPC server closed the connection during HELLO")
        data += chunk
    return data


class LosesRpc(Protocol):
    """What the abort handler tells: an engine whose model runs on RPC devices."""

    def rpc_lost(self, error: RpcServerLost) -> bool:
        """Fail what the engine serves; False while it is still loading (nothing to fail)."""


# engines to tell when an RPC server is lost, with their servers
_watchers: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()
_installed: list[Any] = []  # the ctypes callback (kept alive: C holds a raw pointer)


def _ggml(lib: Any) -> ctypes.CDLL:
    """libggml of the binding (its backend registry; libggml-base's symbols resolve through it)."""
    path = Path(lib.__file__).parent / "lib" / "libggml.so"
    ggml = ctypes.CDLL(str(path))
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    ggml.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_name.restype = ctypes.c_char_p
    return ggml


def _refused(endpoint: str) -> bool:
    """Whether nothing accepts connections at `endpoint` now (a lost server), within a second.
    A live server busy with its one client still accepts the connection into its backlog."""
    host, _, port = endpoint.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
    except OSError:
        return True
    return False


def _watch_aborts(ggml: ctypes.CDLL, engine: LosesRpc, endpoints: tuple[str, ...]) -> None:
    """Catch ggml's aborts from its RPC client (see the module): tell the engines whose servers
    are gone (all of them, where none is seen gone: the abort does not name its server), then
    keep the aborting thread (llama.cpp's connection thread) from returning into abort()."""
    _watchers[engine] = endpoints
    if _installed:
        return
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

    def on_abort(message: bytes | None) -> None:
        text = (message or b"").decode(errors="replace")
        watching = list(_watchers.items())
        if RPC_SOURCE not in text or not watching:
            os.write(2, f"ggml abort: {text}\n".encode())  # not ours: abort as llama.cpp would
            return
        error = RpcServerLost(
            "a llama.cpp RPC server of this provider was lost mid-request (it stopped, or the network to it "
            f"broke: {text.rpartition(': ')[2].strip()}); the provider must be restarted once its servers are back"
        )
        watchers = [w for w, endpoints in watching if any(_refused(e) for e in endpoints)]
        serving = [watcher.rpc_lost(error) for watcher in watchers or [w for w, _ in watching]]
        if not any(serving):  # lost while loading: the load waits on this thread, so end the process
            os.write(2, f"llama.cpp RPC server lost while the model was loading: {text}\n".encode())
            return
        threading.Event().wait()  # never returns: a return here aborts the whole process

    callback = callback_type(on_abort)
    ggml.ggml_set_abort_callback.argtypes = [callback_type]
    ggml.ggml_set_abort_callback.restype = ctypes.c_void_p
    ggml.ggml_set_abort_callback(callback)
    _installed.append(callback)


class RpcDevices:
    """The ggml devices of some RPC servers, for `llama_model_params.devices`, and an even
    split of a model's repeating layers over this host's CPU and each server."""

    def __init__(self, lib: Any, endpoints: tuple[str, ...], engine: LosesRpc) -> None:
        if not lib.llama_supports_rpc():
            raise EngineError(
                "this llama-cpp-python was built without llama.cpp's RPC backend: reinstall it with "
                "CMAKE_ARGS='-DGGML_RPC=ON' (make install does)"
            )
        for endpoint in endpoints:
            probe(endpoint)
        ggml = _ggml(lib)
        _watch_aborts(ggml, engine, endpoints)  # before llama.cpp connects: its connection thread may abort
        registry = ggml.ggml_backend_reg_by_name(b"RPC")
        address = ggml.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_rpc_add_server") if registry else None
        if not address:
            raise EngineError("the llama.cpp binding has no RPC registry (ggml_backend_rpc_add_server)")
        add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(address)
        self.endpoints = endpoints
        self.devices: list[int] = []
        self.names: list[str] = []
        for endpoint in endpoints:
            server = add_server(endpoint.encode())
            if not server:
                raise EngineError(f"llama.cpp RPC server {endpoint} exposes no device")
            for i in range(ggml.ggml_backend_reg_dev_count(server)):
                device = ggml.ggml_backend_reg_dev_get(server, i)
                self.devices.append(device)
                self.names.append(f"{ggml.ggml_backend_dev_name(device).decode()}[{endpoint}]")
        self._array = (ctypes.c_void_p * (len(self.devices) + 1))(*self.devices, None)  # NULL-terminated
        self._split = (ctypes.c_float * int(lib.llama_max_devices()))(*([1.0] * len(self.devices)))

    def apply(self, params: Any, layers: int) -> int:
        """Put the devices into `params` (llama_model_params) with an even split; returns how many
        of the model's `layers` repeating layers stay on this host's CPU. llama.cpp keeps the
        embedding and the first `layers + 1 - n_gpu_layers` layers on the CPU and spreads the
        rest, and the output layer, over the devices by `tensor_split` (here: equal shares), so
        this host and each device hold about as many layers each."""
        local = layers // (len(self.devices) + 1)
        params.devices = ctypes.cast(self._array, ctypes.c_void_p)
        params.tensor_split = ctypes.cast(self._split, ctypes.POINTER(ctypes.c_float))
        params.n_gpu_layers = layers + 1 - local
        return local


def bound_silence(endpoints: tuple[str, ...], seconds: int = SILENCE_S) -> int:
    """Give this process's TCP connections to `endpoints` keepalive probes and a user timeout,
    so that a peer that goes silent breaks the connection within about `seconds` (see the
    module); returns how many connections were found. Linux only (/proc/net/tcp)."""
    peers = {(info[4][0], info[4][1]) for e in endpoints for info in _addresses(e)}
    inodes = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes[target[8:-1]] = int(fd)
    found = 0
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state != "01" or inode not in inodes or _peer(remote, family) not in peers:  # 01: established
                continue
            with socket.socket(fileno=os.dup(inodes[inode])) as sock:  # a duplicate: closing it keeps llama.cpp's
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, seconds // 3))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, seconds // 6))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, seconds * 1000)
            found += 1
    return found


def _addresses(endpoint: str) -> list[Any]:
    host, _, port = endpoint.rpartition(":")
    try:
        return socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except OSError:
        return []


def _peer(address: str, family: int) -> tuple[str, int]:
    """An address of /proc/net/tcp (hex, in 32-bit words of host order) as (ip, port)."""
    ip, port = address.split(":")
    raw = b"".join(struct.pack("=I", int(ip[i : i + 8], 16)) for i in range(0, len(ip), 8))
    return socket.inet_ntop(family, raw), int(port, 16)


def rpc_server_binary() -> Path:
    """The ggml-rpc-server to run on a host: $ALLMENDE_RPC_SERVER, else the one `make install`
    built next to this checkout, else one on PATH; EngineError saying how to build it."""
    given = os.environ.get("ALLMENDE_RPC_SERVER")
    if given:
        return Path(given)
    built = built_rpc_server(Path(__file__).resolve().parents[3] / ".tools" / "llama-rpc")
    if built.exists():
        return built
    found = shutil.which(SERVER_TARGET) or shutil.which("rpc-server")
    if found:
        return Path(found)
    raise EngineError(f"no {SERVER_TARGET}: `make install` builds it into {built.parent}")


def built_rpc_server(tools: Path) -> Path:
    """Where `allmende.engine.llamacpp_build` puts the ggml-rpc-server of the installed binding."""
    return tools / f"build-{binding_version()}" / "bin" / SERVER_TARGET


def binding_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise EngineError("llama-cpp-python is not installed (make install builds it)") from None
