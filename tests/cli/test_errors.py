"""Every bad CLI input is one line on stderr and exit code 1 or 2, never a traceback;
`--debug` (or ALLMENDE_DEBUG=1) lets the traceback through. In process (typer's CliRunner)
against the session's anvil, so the table costs little."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from allmende.chain import DeploymentNotFound
from allmende.chain.anvil import Anvil
from allmende.cli import app

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens there
ZERO_DATASET = "0x" + "00" * 32

BAD = [  # (what the user did, the command line, words the one line must hold)
    ("grant to a short address", "data grant --dataset {dataset} --grantee 0x1234 --template evaluate --key devnet:5",
     "'0x1234' is not an address"),
    ("grant on a short dataset id", "data grant --dataset 0x12 --grantee {holder} --template evaluate --key devnet:5",
     "'0x12' is not a dataset id"),
    ("log of a short dataset id", "data log --dataset 0x12", "'0x12' is not a dataset id"),
    ("log of a dataset id that is not hex", "data log --dataset 0xzz", "hex"),
    ("deployments file that does not exist", "models list --deployments /nonexistent/deployments.json",
     "no deployments file at /nonexistent"),
    ("status with a deployments file that does not exist", "status --deployments /nonexistent/deployments.json",
     "no deployments file at /nonexistent"),
    ("delegate to a short address", "gov delegate 0x1234 --key devnet:5", "not an address"),
    ("unreachable --rpc", f"models list --rpc {NOWHERE}", "unreachable"),
    ("unreachable --rpc for status", f"status --rpc {NOWHERE}", "unreachable"),
    ("unreachable --rpc for params", f"params --rpc {NOWHERE}", "unreachable"),
    ("a model id that is too short", "models show 0x12", "64 hex digits"),
    ("register a folder that does not exist", "models register /nonexistent/model --license MIT --key devnet:5",
     "neither a local folder"),
    ("a keystore file that does not exist", "gov stake 1 --key /nonexistent/key.json", "no keystore file"),
    ("a revert: unstake more than staked", "gov unstake 1 --key devnet:5", "unstake above stake"),
    ("fund a short address", "faucet 0x1234", "not an address"),
    ("stake a negative amount (click's usage error)", "gov stake -5 --key devnet:5", "No such option"),
    ("llama.cpp options with the transformers engine",
     "provider --key devnet:5 --engine transformers --llamacpp-threads 2",
     "--llamacpp-threads go with --engine llamacpp"),
    ("llama.cpp RPC servers with the transformers engine",
     "provider --key devnet:5 --engine transformers --llamacpp-rpc 127.0.0.1:50052",
     "--llamacpp-rpc go with --engine llamacpp"),
    ("a llama.cpp RPC server that is not HOST:PORT", "provider --key devnet:5 --llamacpp-rpc nohost",
     "is not HOST:PORT"),
    ("a llama.cpp RPC server nobody runs",
     "provider --key devnet:5 --port 0 --model smollm2-135m-instruct --llamacpp-rpc 127.0.0.1:9",
     "RPC server 127.0.0.1:9 cannot be reached"),
    ("unknown llama.cpp weights", "provider --key devnet:5 --engine llamacpp --llamacpp-weights q8",
     "--llamacpp-weights must be one of native, f16, mixed, not 'q8'"),
    ("no llama.cpp threads", "provider --key devnet:5 --engine llamacpp --llamacpp-threads 0",
     "--llamacpp-threads must be at least 1"),
    ("no torch threads", "provider --key devnet:5 --torch-threads 0", "--torch-threads must be at least 1"),
]  # fmt: skip


@pytest.fixture(scope="module")
def env(anvil: Anvil, deployments_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    state = tmp_path_factory.mktemp("cli-errors")
    return {
        "ALLMENDE_STATE_DIR": str(state),
        "ALLMENDE_DEPLOYMENTS": str(deployments_file),
        "ALLMENDE_RPC": anvil.url,
        "ALLMENDE_DEBUG": None,
        "ALLMENDE_PASSWORD": "x",
    }


@pytest.mark.parametrize(("line", "words"), [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_one_line_on_stderr_never_a_traceback(env, accounts, line: str, words: str) -> None:
    args = line.format(dataset=ZERO_DATASET, holder=accounts[6].address).split()
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code in (1, 2), (line, result.output)
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), (line, repr(result.exception))
    assert result.stdout.strip() == "", (line, result.stdout)
    assert words in result.stderr, (line, result.stderr)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), (line, result.stderr)
    if "--help`)" in lines[0]:  # click's usage errors keep their exit code 2 and point to --help
        assert result.exit_code == 2, (line, result.exit_code)


def test_debug_lets_the_traceback_through(env) -> None:
    line = ["models", "list", "--deployments", "/nonexistent/deployments.json"]
    quiet = CliRunner().invoke(app, line, env=env)
    assert quiet.exit_code == 1 and isinstance(quiet.exception, SystemExit)

    loud = CliRunner().invoke(app, ["--debug", *line], env=env)
    assert isinstance(loud.exception, DeploymentNotFound)
    by_env = CliRunner().invoke(app, line, env={**env, "ALLMENDE_DEBUG": "1"})
    assert isinstance(by_env.exception, DeploymentNotFound)
