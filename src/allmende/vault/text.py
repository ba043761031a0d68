"""Text and chat datasets a vault holds for language-model templates (federated LoRA, LM evaluation).

A JSONL file whose lines are `{"text": "..."}` or `{"messages": [{"role", "content"}, ...]}` (the
last message the assistant's: what a fine-tune learns to answer). Its id is the manifest hash
of the file, as for tables (`allmende.vault.datasets.dataset_id_of`). Never serialised out of the
vault: `describe` says how many rows and which kind, nothing of their content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allmende.vault.datasets import dataset_id_of
from allmende.vault.errors import BadDataFile

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TextDataset:
    name: str
    dataset_id: bytes
    kind: str  # "text" or "chat"
    rows: list[dict[str, Any]] = field(repr=False)

    def describe(self) -> dict[str, object]:
        return {"dataset_id": "0x" + self.dataset_id.hex(), "name": self.name, "rows": len(self.rows),
                "kind": self.kind}  # fmt: skip


def is_text_file(path: str | Path) -> bool:
    """A JSONL file whose first row is a text or chat row (tables hold numbers only)."""
    p = Path(path)
    if p.suffix.lower() != ".jsonl" or not p.is_file():
        return False
    with p.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and bool({"text", "messages"} & set(first))
    return False


def _row(obj: object, where: str) -> tuple[str, dict[str, Any]]:
    if isinstance(obj, dict) and set(obj) == {"text"} and isinstance(obj["text"], str) and obj["text"]:
        return "text", {"text": obj["text"]}
    if not isinstance(obj, dict) or set(obj) != {"messages"} or not isinstance(obj["messages"], list):
        raise BadDataFile(f'{where}: a row is {{"text": "..."}} or {{"messages": [...]}}')
    messages = obj["messages"]
    if len(messages) < 2 or not all(
        isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES and isinstance(m["content"], str)
        for m in messages
    ):
        raise BadDataFile(f"{where}: messages are {{role, content}} with roles {', '.join(ROLES)}, two or more")
    if messages[-1]["role"] != "assistant":
        raise BadDataFile(f"{where}: the last message must be the assistant's (the answer a fine-tune learns)")
    return "chat", {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


def load_text(path: str | Path, name: str | None = None) -> TextDataset:
    p = Path(path)
    if not p.is_file():
        raise BadDataFile(f"{p}: no such file")
    rows, kinds = [], set()
    try:
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BadDataFile(f"{p.name}:{n + 1}: not JSON ({exc.msg})") from None
                kind, row = _row(obj, f"{p.name}:{n + 1}")
                kinds.add(kind)
                rows.append(row)
    except UnicodeDecodeError:
        raise BadDataFile(f"{p.name}: not UTF-8") from None
    if not rows:
        raise BadDataFile(f"{p.name}: no rows")
    if len(kinds) > 1:
        raise BadDataFile(f"{p.name}: mixes text rows and chat rows")
    return TextDataset(name or p.stem, dataset_id_of(p), kinds.pop(), rows)
