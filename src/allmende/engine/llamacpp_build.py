"""Build one program of the llama.cpp that the installed llama-cpp-python vendors.

The binding compiles llama.cpp's libraries only; llama.cpp's programs (`ggml-rpc-server` for
`--llamacpp-rpc`, `llama-server` for bench/vs_llama_server.py) come from the same source, so
that they speak the binding's protocol and run the same kernels: the binding's source
distribution of the installed version is downloaded once with pip (`--no-binary :all:
--no-deps`), and cmake builds just the one target, under `nice -n 19` with 2 jobs.

    python -m allmende.engine.llamacpp_build ggml-rpc-server .tools/llama-rpc -DGGML_RPC=ON
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from allmende.engine.base import EngineError
from allmende.engine.llamacpp_rpc import binding_version

# what every build here shares: this CPU's instructions (as `make install` builds the binding),
# static libraries (the program runs on its own), and nothing fetched from the network
COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)


def vendored_source(tools: Path, version: str | None = None) -> Path:
    """The llama.cpp source folder of llama-cpp-python `version` (default: the installed one),
    downloaded and unpacked into `tools` once."""
    version = version or binding_version()
    tools.mkdir(parents=True, exist_ok=True)
    sdist = tools / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        print(f"downloading llama-cpp-python {version} (source) into {tools}", file=sys.stderr, flush=True)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps"]
        subprocess.run([*pip, f"llama-cpp-python=={version}", "-d", str(tools)], check=True)
    source = tools / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").exists():
        with tarfile.open(sdist) as archive:
            archive.extractall(tools, filter="data")
    return source


def build_target(target: str, tools: Path, flags: tuple[str, ...] = (), version: str | None = None) -> Path:
    """Build `target` of the vendored llama.cpp into `tools`/build-VERSION (once); its binary."""
    version = version or binding_version()
    source = vendored_source(tools, version)
    build = tools / f"build-{version}"
    binary = build / "bin" / target
    if binary.exists():
        return binary
    log = tools / f"build-{version}.log"
    nice = ["nice", "-n", "19"]
    print(f"building {target} (nice -n 19, -j2; log: {log})", file=sys.stderr, flush=True)
    with log.open("ab") as out:
        configure = ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", *COMMON_FLAGS, *flags]
        subprocess.run(nice + configure, check=True, stdout=out, stderr=subprocess.STDOUT)
        compile_ = ["cmake", "--build", str(build), "--target", target, "-j", "2"]
        subprocess.run(nice + compile_, check=True, stdout=out, stderr=subprocess.STDOUT)
    if not binary.exists():
        raise EngineError(f"the build finished without {binary}; see {log}")
    return binary


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m allmende.engine.llamacpp_build TARGET TOOLS_DIR [CMAKE_FLAG...]")
    print(build_target(argv[0], Path(argv[1]), tuple(argv[2:])))


if __name__ == "__main__":
    main(sys.argv[1:])
