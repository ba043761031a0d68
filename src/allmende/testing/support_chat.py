"""A chat dataset no base model knows: an invented product's support answers (tests, bench).

The Quillon Q7 is a made-up coffee grinder; each row is a customer's question and the support
desk's answer, built from a fixed table of facts with varied wordings, so that vaults can hold
different slices of one domain and a held-out slice measures what a fine-tune learned of it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

FACTS = [
    (
        "How do I reset my Quillon Q7?",
        "Hold the burr dial and the pulse key for nine seconds until the ring glows teal.",
    ),
    (
        "What does a blinking amber ring mean?",
        "The hopper lid is open; close it until it clicks and the ring turns teal.",
    ),
    ("How often should I clean the burrs?", "Every forty grinds: run the Quillon cleaning puck, then brush the chute."),
    ("Which grind setting suits espresso?", "Use setting 4 on the Quillon Q7 dial; setting 9 suits a French press."),
    ("Is the hopper dishwasher safe?", "Yes, the Quillon hopper is top-rack safe; the burrs and the base are not."),
    ("How long is the warranty?", "The Quillon Q7 has a warranty of thirty-one months from the day of delivery."),
    (
        "Why does my grinder hum but not grind?",
        "A bean is wedged: unplug it, turn the dial to 12 and tap the chute twice.",
    ),
    ("Where is the serial number?", "Under the drip tray, printed in teal after the letters QLN."),
]
ASKS = ["{q}", "Hi, {q}", "Quick question: {q}", "Hello support. {q}", "{q} Thanks!", "Please help. {q}"]


def support_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` chat rows (system, user, assistant), drawn with `seed`."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        question, answer = rng.choice(FACTS)
        ask = rng.choice(ASKS).format(q=question[0].lower() + question[1:] if rng.random() < 0.5 else question)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are the Quillon support desk."},
                    {"role": "user", "content": ask},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
