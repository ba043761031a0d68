"""The audit traffic: private, rotating prompts and parameters drawn like users' requests.

A provider that could recognise audits would serve them honestly and cheat everyone else,
so an audit must look like any other request. The parts a provider sees are the body's
shape (the gateway's, as for every user), the parameters and the prompt. Parameters
follow the mix of ordinary OpenAI clients (most leave temperature and top_p at their
defaults; some ask for greedy or a lower temperature; half stream; a tenth ask for
n = 2 or 3 choices, each of which is checked; none sets a seed). Prompts
are composed fresh for each audit from tasks, subjects and styles with the validator's own
randomness (a system random source unless a seed is configured for tests), in the shapes
chat apps send: one question, a system prompt and a question, or a short conversation.
There is no fixed list to match against; an operator can add its own prompts
(`--prompts FILE`, one per line) and these are mixed in.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

TASKS = [
    "Explain {s} to someone who has never heard of it.",
    "Write a short paragraph about {s}.",
    "What are the pros and cons of {s}?",
    "Give me three facts about {s}.",
    "How would you describe {s} in one sentence?",
    "Write a haiku about {s}.",
    "What should a beginner know about {s}?",
    "Summarise the history of {s} briefly.",
    "Compare {s} with something similar.",
    "List some common misconceptions about {s}.",
    "Erkläre mir {s} in einfachen Worten.",
    "Schreib ein kurzes Gedicht über {s}.",
    "Was sind die Vor- und Nachteile von {s}?",
    "Explique-moi {s} simplement.",
    "Can you help me understand {s}?",
    "I'm preparing a talk on {s}. What should I cover?",
    "Tell me a short story that involves {s}.",
    "Why do people care about {s}?",
]
SUBJECTS = [
    "rivers",
    "photosynthesis",
    "compound interest",
    "the printing press",
    "volcanoes",
    "sourdough bread",
    "public libraries",
    "solar panels",
    "honey bees",
    "the Roman roads",
    "chess openings",
    "tides",
    "recycling",
    "jazz",
    "the water cycle",
    "bicycles",
    "neural networks",
    "glaciers",
    "tea",
    "democracy",
    "the moon",
    "vaccines",
    "coffee",
    "maps",
    "lighthouses",
    "origami",
    "trains",
    "forests",
    "prime numbers",
    "the internet",
    "sleep",
    "wind turbines",
    "clouds",
    "cheese making",
    "the human heart",
    "bridges",
    "spreadsheets",
    "whales",
    "gardening",
    "electric cars",
    "the Olympic games",
    "mushrooms",
    "poetry",
    "earthquakes",
    "a commons",
    "payment channels",
    "hash functions",
    "spare GPUs",
    "Wahlen",
    "Klima",
]
STYLES = ["", " Keep it short.", " Use simple words.", " Answer in a list.", " Be precise.", " Please."]
SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "Du bist ein hilfreicher Assistent.",
    "You are a friendly tutor.",
]
FOLLOW_UPS = ["Can you say more?", "Thanks! And why is that?", "Give an example.", "Kürzer, bitte."]


class AuditTraffic:
    """Bodies of audit requests, as a chat app would send them."""

    def __init__(self, seed: int | None = None, prompts_file: Path | None = None) -> None:
        self.rng: random.Random = random.Random(seed) if seed is not None else random.SystemRandom()
        self.own = (
            [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()] if prompts_file else []
        )

    def question(self) -> str:
        if self.own and self.rng.random() < 0.5:
            return self.rng.choice(self.own)
        task = self.rng.choice(TASKS).format(s=self.rng.choice(SUBJECTS))
        return task + self.rng.choice(STYLES)

    def messages(self) -> list[dict[str, str]]:
        shape = self.rng.random()
        if shape < 0.5:
            return [{"role": "user", "content": self.question()}]
        if shape < 0.8:
            return [
                {"role": "system", "content": self.rng.choice(SYSTEMS)},
                {"role": "user", "content": self.question()},
            ]
        first = self.question()
        earlier = self.rng.choice(SUBJECTS)
        return [
            {"role": "user", "content": first},
            {"role": "assistant", "content": f"Sure. In short, it is about {earlier}."},
            {"role": "user", "content": self.rng.choice(FOLLOW_UPS)},
        ]

    def body(self, model: str) -> dict[str, Any]:
        """One request body for `model` (a name as the gateway lists it)."""
        body: dict[str, Any] = {"model": model, "messages": self.messages()}
        body["max_tokens"] = self.rng.choice([16, 32, 48, 64, 64, 96, 128])
        mode = self.rng.random()
        if mode < 0.25:
            body["temperature"] = 0
        elif mode < 0.5:
            body["temperature"] = self.rng.choice([0.2, 0.5, 0.7, 0.8])
        elif mode < 0.6:
            body["temperature"] = 0.7
            body["top_p"] = self.rng.choice([0.9, 0.95])
        # else: the defaults, as most clients send
        if self.rng.random() < 0.5:
            body["stream"] = True
        elif self.rng.random() < 0.2:  # some apps ask for several choices (not with stream)
            body["n"] = self.rng.choice([2, 3])
        return body
