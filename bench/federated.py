"""Federated training across 3 vault processes on anvil vs centralised training.

scikit-learn's digits (or breast cancer) split across 3 vaults (CSV, JSONL, Parquet);
the same model trained (a) centrally without privacy on the union of the vaults'
rows, (b) with Flower SecAgg+ and DP across the vaults, (c) with plain FedAvg (no
SecAgg+) and the same DP. Reports held-out accuracy, their ratio, epsilon per vault,
and per-round time (median over rounds) and bytes of SecAgg+ vs plain FedAvg.

    python bench/federated.py [--dataset digits|breast_cancer] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_breast_cancer, load_digits

from allmende.testing.vaults import start_vault_network
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

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        splits = [(x_train[i], y_train[i]) for i in parts]
        net = start_vault_network(root, splits, vault_args=["--min-noise", str(args.noise)])
        try:
            owner, coordinator = net.accounts[1], net.accounts[2]
            base_id = save_model(root / "base", spec, base)
            net.contracts(owner).models.register(base_id, "Apache-2.0", 500, [], [], "")
            for mode in ("secagg", "fedavg"):
                participants = [
                    Participant(
                        v.url,
                        v.dataset_id,
                        net.grant(v, coordinator.address, "federated_round", [base_id], 1_000.0),
                    )
                    for v in net.vaults
                ]
                config = FederatedConfig(
                    rounds=args.rounds, steps=args.steps, lr=lr, noise=args.noise, secagg=mode == "secagg"
                )
                started = time.perf_counter()
                out = run_federated(participants, coordinator.key, spec, base, base_id, config)
                wall = time.perf_counter() - started
                spent = net.reader().data.get_grant(participants[0].grant_id).epsilon_spent
                results[mode] = {
                    "accuracy": accuracy(spec, out.params, x_test, y_test),
                    "seconds_per_round": statistics.median(out.round_seconds),
                    "wall_seconds": wall,
                    "bytes_per_round": (out.bytes_sent + out.bytes_received) / args.rounds,
                    "messages_per_round": out.messages / args.rounds,
                    "epsilon_per_vault": spent / MICRO,
                }
        finally:
            net.stop()

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
