"""llama.cpp `ggml-rpc-server` processes for tests and benchmarks of `--llamacpp-rpc`: on a
free port of this host, or inside a network namespace (another host, as far as the network
goes); with the CPU time they spent, to show that layers ran there."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from allmende.chain.anvil import free_port
from allmende.engine.base import EngineError
from allmende.engine.llamacpp_rpc import probe, rpc_server_binary


class RpcServer:
    """One `ggml-rpc-server -t THREADS` listening on HOST:PORT (in namespace `netns`, if given)."""

    def __init__(self, log: Path, host: str = "127.0.0.1", netns: str | None = None, threads: int = 1) -> None:
        self.port = free_port()
        self.endpoint = f"{host}:{self.port}"
        command = [str(rpc_server_binary()), "-H", host, "-p", str(self.port), "-t", str(threads)]
        if netns is not None:  # `ip netns exec` execs the server: the pid is the server's
            command = ["ip", "netns", "exec", netns, *command]
        self.log = log
        self.process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:  # up once it answers HELLO (a probe is a client that leaves at once)
            try:
                probe(self.endpoint, timeout=2)
                break
            except EngineError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"ggml-rpc-server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User and system CPU time the server has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """Gone at once, as a host that loses power (its kernel still closes the connections)."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
