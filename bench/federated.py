"""Federated training across 3 vault processes on anvil vs centralised training.

scikit-learn's digits (or breast cancer) split across 3 vaults (CSV, JSONL, Parquet);
the same model trained (a) centrally without privacy on the union of the vaults'
rows, (b) with Flower SecAgg+ and DP across the vaults, (c) with plain FedAvg (no
SecAgg+) and the same DP. Reports held-out accuracy, their ratio, epsilon per vault,
and per-round time and bytes of SecAgg+ vs plain FedAvg.

    python bench/federated.py [--dataset digits|breast_cancer] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_breast_cancer, load_digits

from allmende.chain import ChainClient, Contracts
from allmende.chain.anvil import Anvil, devnet_accounts, free_port
from allmende.chain.bindings import TEMPLATES
from allmende.chain.deploy import Deployment, deploy_all
from allmende.vault.datasets import load_table, write_table
from allmende.vault.flower import FederatedConfig, Participant, run_federated
from allmende.vault.model import MICRO, ModelSpec, accuracy, save_model, train


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        x, y = load_digits(return_X_y=True)
        return x / 16.0, y
    x, y = load_breast_cancer(return_X_y=True)
    return (x - x.mean(0)) / x.std(0) / 4.0, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "breast_cancer"], default="digits")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--noise", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    x, y = load(args.dataset)
    order = np.random.default_rng(7).permutation(len(y))
    x, y = x[order], y[order]
    n_test = len(y) // 5
    x_test, y_test, x_train, y_train = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    spec = ModelSpec(x.shape[1], int(y.max()) + 1)
    public = 40
    base = train(spec, spec.init(0), x_train[:public], y_train[:public], steps=40, lr=1.0)
    parts = np.array_split(np.arange(public, len(y_train)), 3)
    lr = 2.0
    central = train(spec, base, x_train[public:], y_train[public:], steps=args.rounds * args.steps, lr=lr)

    accounts = devnet_accounts(10)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        node = Anvil(port=free_port(), log_file=root / "anvil.log")
        processes = []
        try:
            deployment = deploy_all(ChainClient(node.url, accounts[0].key), fund=[a.address for a in accounts])
            deployments = root / "deployments.json"
            deployment.save(deployments)
            owner = Contracts(ChainClient(node.url, accounts[1].key), Deployment.load(deployments))
            base_id = save_model(root / "base", spec, base)
            owner.models.register(base_id, "Apache-2.0", 500, [], [], "")
            columns = [f"f{i}" for i in range(x.shape[1])]
            urls, datasets = [], []
            for i, (index, suffix) in enumerate(zip(parts, (".csv", ".jsonl", ".parquet"), strict=True)):
                path = write_table(root / f"part-{i}{suffix}", columns, x_train[index], y_train[index])
                port = free_port()
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "allmende",
                            "vault",
                            "--rpc",
                            node.url,
                            "--key",
                            f"devnet:{4 + i}",
                            "--deployments",
                            str(deployments),
                            "--state-dir",
                            str(root / f"vault-{i}"),
                            "--port",
                            str(port),
                            "--data",
                            str(path),
                            "--min-noise",
                            str(args.noise),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
                datasets.append(load_table(path).dataset_id)
            for url in urls:
                for _ in range(600):
                    try:
                        if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.1)
            coordinator = accounts[2]
            for mode in ("secagg", "fedavg"):
                participants = []
                for i, (url, dataset) in enumerate(zip(urls, datasets, strict=True)):
                    vault = Contracts(ChainClient(node.url, accounts[4 + i].key), Deployment.load(deployments))
                    expires = vault.client.timestamp() + 86_400
                    g = vault.data.grant(
                        dataset, coordinator.address, TEMPLATES["federated_round"], [base_id], expires, 1_000 * MICRO
                    )
                    participants.append(Participant(url, dataset, g))
                config = FederatedConfig(
                    rounds=args.rounds, steps=args.steps, lr=lr, noise=args.noise, secagg=mode == "secagg"
                )
                started = time.perf_counter()
                out = run_federated(participants, coordinator.key, spec, base, base_id, config)
                wall = time.perf_counter() - started
                spent = (
                    Contracts(ChainClient(node.url), Deployment.load(deployments))
                    .data.get_grant(participants[0].grant_id)
                    .epsilon_spent
                )
                results[mode] = {
                    "accuracy": accuracy(spec, out.params, x_test, y_test),
                    "seconds_per_round": wall / args.rounds,
                    "bytes_per_round": (out.bytes_sent + out.bytes_received) / args.rounds,
                    "messages_per_round": out.messages / args.rounds,
                    "epsilon_per_vault": spent / MICRO,
                }
        finally:
            for p in processes:
                p.terminate()
            for p in processes:
                p.wait(timeout=20)
            node.stop()

    central_acc = accuracy(spec, central, x_test, y_test)
    report = {
        "dataset": args.dataset,
        "rounds": args.rounds,
        "local_steps": args.steps,
        "noise_multiplier": args.noise,
        "base_accuracy": round(accuracy(spec, base, x_test, y_test), 4),
        "centralized_accuracy": round(central_acc, 4),
        "federated_accuracy": round(results["secagg"]["accuracy"], 4),
        "federated_over_centralized_accuracy": round(results["secagg"]["accuracy"] / central_acc, 4),
        "epsilon_per_vault": round(results["secagg"]["epsilon_per_vault"], 3),
        "delta": 1e-5,
        "secagg_seconds_per_round": round(results["secagg"]["seconds_per_round"], 3),
        "fedavg_seconds_per_round": round(results["fedavg"]["seconds_per_round"], 3),
        "secagg_bytes_per_round": int(results["secagg"]["bytes_per_round"]),
        "fedavg_bytes_per_round": int(results["fedavg"]["bytes_per_round"]),
        "secagg_messages_per_round": int(results["secagg"]["messages_per_round"]),
        "fedavg_messages_per_round": int(results["fedavg"]["messages_per_round"]),
        "fedavg_accuracy": round(results["fedavg"]["accuracy"], 4),
        "goals": {"federated_over_centralized_accuracy": 0.95},
    }
    if args.json:
        print(json.dumps(report))
        return
    table = Table(title=f"federated training, {args.dataset}, 3 vaults, {args.rounds} rounds × {args.steps} DP steps")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in report.items():
        if key != "goals":
            table.add_row(key, str(value))
    Console().print(table)


if __name__ == "__main__":
    main()
