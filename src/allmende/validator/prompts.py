"""The audit traffic: private, rotating prompts in the shapes users send.

A provider that could recognise audits would serve them honestly and cheat everyone else,
so an audit must look like any other request. The parts a provider sees are the body's
shape and the prompt. The shape is drawn from the request shapes the gateway counts and
publishes (`GET /v1/shapes`, allmende.api.shapes: fields present, coarse values, role
sequences, length buckets, stream, tools, response format, stop strings, seeds, `n`,
logprobs), in proportion to how often users send each, plus a small smoothing weight so
that a rare shape is audited too (`draw`); `compose` then writes a body of exactly that
shape: tools, schemas and stop strings are audited as users send them and checked by the
same rules. Before a gateway has counted anything, the shapes of ordinary chat apps are
used (`body`). Prompts are composed fresh for each audit from tasks, subjects and styles
with the validator's own randomness (a system random source unless a seed is configured
for tests); there is no fixed list to match against, and an operator can add its own
prompts (`--prompts FILE`, one per line), which are mixed in.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from allmende.api.shapes import TOKEN_BUCKETS, TOP_K_EXACT, Shape, bucket_range, shape_of
from allmende.core.endpoints import ENDPOINTS
from allmende.engine.base import Kind

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
# logit_bias token ids an audit biases: ids every served model has (the tiny model's vocabulary
# is its 256 bytes); which ids users bias never leaves their gateway, only how many
BIASED_IDS = 256
STOPS = ["\n\n", "###", "User:", "\n", "END", "</s>", "Q:", ".", "\n---", "Human:"]
TOOLS = [
    ("get_weather", "Current weather for a city", {"city": {"type": "string"}}),
    ("search_docs", "Search the documentation", {"query": {"type": "string"}}),
    ("convert_units", "Convert a value between units", {"value": {"type": "number"}, "to": {"type": "string"}}),
    ("get_time", "The time in a time zone", {"zone": {"type": "string"}}),
    ("lookup_word", "A word's definition", {"word": {"type": "string"}}),
    ("add_task", "Add a task to a list", {"title": {"type": "string"}, "due": {"type": "string"}}),
]
TOOK_MOST = TOKEN_BUCKETS[-1]
SMOOTHING = 1.0  # added to every published shape's count: rare shapes are audited too
AUDITED_KINDS = ("chat", "completion")


class Uncomposable(ValueError):
    """A shape this validator cannot write a body of (a field it does not know)."""


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
        """One chat request body for `model` (a name as the gateway lists it), in the shapes
        ordinary chat apps send: what audits look like before a gateway published shapes."""
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

    # ------------------------------------------------------------ drawn shapes

    def draw(self, published: Mapping[str, Any] | None, model: str) -> tuple[Kind, dict[str, Any]]:
        """The kind and body of one audit of `model`: a shape drawn from a gateway's published
        counts (`GET /v1/shapes`) with weight count + SMOOTHING, composed; the chat apps'
        shapes while nothing is published (or nothing published can be composed)."""
        shapes: list[Shape] = []
        weights: list[float] = []
        for item in (published or {}).get("data") or []:
            shape, count = item.get("shape"), item.get("count")
            if isinstance(shape, dict) and shape.get("kind") in AUDITED_KINDS and isinstance(count, int):
                shapes.append({str(k): str(v) for k, v in shape.items()})
                weights.append(count + SMOOTHING)
        while shapes:
            i = self.rng.choices(range(len(shapes)), weights)[0]
            try:
                return ("completion" if shapes[i]["kind"] == "completion" else "chat"), self.compose(shapes[i], model)
            except Uncomposable:
                del shapes[i], weights[i]  # not this validator's to write: draw among the others
        return "chat", self.body(model)

    def compose(self, shape: Mapping[str, str], model: str) -> dict[str, Any]:
        """A body of exactly `shape` (allmende.api.shapes.shape_of gives it back), with fresh
        content; Uncomposable if the shape holds something this validator cannot write."""
        kind = shape.get("kind")
        body: dict[str, Any] = {"model": model}
        low, high = bucket_range(shape.get("chars", "<=400"))
        target = self.rng.randint(low, high)
        served = ENDPOINTS.get(str(kind))
        if served is not None and served.chat:
            body["messages"] = self._conversation(shape.get("roles", "u"), shape.get("content", "str"), target)
        elif served is not None and served.generates and shape.get("roles") == "prompt:str":
            body["prompt"] = _fit(self.question(), target, self.question)
        else:
            raise Uncomposable(f"kind {kind} with {shape.get('roles')}")
        keys = [k for k in shape.get("keys", "").split(",") if k]
        for key in keys:
            body[key] = self._value(key, shape.get(f"v.{key}", ""), shape)
        if body.get("response_format", {}).get("type") == "json_object":
            _mention_json(body)
        if isinstance(body.get("tool_choice"), dict) and body.get("tools"):  # a tool the request offers
            body["tool_choice"]["function"]["name"] = body["tools"][0]["function"]["name"]
        composed = shape_of(str(kind), body, shape.get("endpoint"))
        if composed != dict(shape):
            raise Uncomposable(f"composed {composed}, wanted {dict(shape)}")
        return body

    def _conversation(self, roles: str, form: str, target: int) -> list[dict[str, Any]]:
        letters = _expand(roles)
        messages: list[dict[str, Any]] = []
        calls = 0
        for letter in letters:
            if letter in "sd":
                messages.append(
                    {"role": "system" if letter == "s" else "developer", "content": self.rng.choice(SYSTEMS)}
                )
            elif letter == "u":
                messages.append({"role": "user", "content": self.question()})
            elif letter == "a":
                messages.append(
                    {"role": "assistant", "content": f"Sure. In short, it is about {self.rng.choice(SUBJECTS)}."}
                )
            elif letter == "A":
                calls += 1
                name, _, params = self.rng.choice(TOOLS)
                arguments = {p: self.rng.choice(SUBJECTS) if spec["type"] == "string" else self.rng.randint(1, 99)
                             for p, spec in params.items()}  # fmt: skip
                call = {"id": f"call_{self.rng.getrandbits(64):016x}", "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)}}  # fmt: skip
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif letter == "t":
                previous = next((m for m in reversed(messages) if m.get("tool_calls")), None)
                ident = previous["tool_calls"][0]["id"] if previous else f"call_{self.rng.getrandbits(64):016x}"
                result = {"result": self.rng.choice(SUBJECTS), "ok": True}
                messages.append({"role": "tool", "tool_call_id": ident, "content": json.dumps(result)})
            else:
                raise Uncomposable(f"role sequence {roles}")
        texts = [m for m in messages if m.get("content") is not None]
        if not texts:
            raise Uncomposable(f"no text in {roles}")
        # the length bucket: the last user turn (or the last text) grows or shrinks to fit
        last = next((m for m in reversed(texts) if m["role"] == "user"), texts[-1])
        others = sum(len(m["content"]) for m in texts if m is not last)
        if others >= target:  # a short bucket: the other turns are cut too, each to its share
            share = max(1, (target // 2) // max(1, len(texts) - 1))
            for m in texts:
                if m is not last:
                    m["content"] = _fit(m["content"], min(len(m["content"]), share), self.question)
            others = sum(len(m["content"]) for m in texts if m is not last)
        last["content"] = _fit(last["content"], max(1, target - others), self.question)
        if form in ("parts", "mixed"):
            chosen = texts if form == "parts" else texts[:1]
            if form == "mixed" and len(texts) < 2:
                raise Uncomposable("mixed content in one message")
            for m in chosen:
                m["content"] = [{"type": "text", "text": m["content"]}]
        elif form != "str":
            raise Uncomposable(f"content {form}")
        return messages

    def _value(self, key: str, token: str, shape: Mapping[str, str]) -> Any:
        """A value of field `key` with coarse token `token`."""
        rng = self.rng
        if key in ("max_tokens", "max_completion_tokens"):
            if token.startswith("<="):
                high = int(token[2:])
                edges = (0, *TOKEN_BUCKETS)
                low = edges[edges.index(high) - 1] + 1
                return rng.randint(low, high)
            return rng.randint(TOOK_MOST + 1, 2 * TOOK_MOST)  # beyond the largest bucket
        if key == "top_k":
            return rng.randint(TOP_K_EXACT + 1, 4 * TOP_K_EXACT) if token.startswith(">") else int(token)
        if key == "logit_bias" and token.startswith("bias"):  # token ids the smallest served vocabulary has
            count = int(token[4:]) if token != "bias5" else rng.randint(5, 12)
            ids = rng.sample(range(BIASED_IDS), count)
            return {str(t): rng.choice((-100, -10, -2.5, 1, 5)) for t in ids}
        if key in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty") or token.startswith("("):
            if token in ("0", "1"):
                return int(token) if rng.random() < 0.5 else float(token)
            if token.startswith("("):
                low_s, high_s = token[1:-1].split(",")
                return round(rng.uniform(float(low_s) + 0.01, float(high_s) - 0.01), 2)
            raise Uncomposable(f"{key} {token}")
        if key == "seed":
            return rng.randrange(2**31) if token == "set" else None
        if key == "stop":
            if token == "str":
                return rng.choice(STOPS)
            if token.startswith("list"):
                return rng.sample(STOPS, int(token[4:]))
        if key == "tools" and token.startswith("list"):
            return [_tool(*spec) for spec in rng.sample(TOOLS, min(int(token[4:]), len(TOOLS)))]
        if key == "tool_choice":
            if token in ("auto", "none", "required"):
                return token
            if token == "named":
                return {"type": "function", "function": {"name": TOOLS[0][0]}}  # replaced below if tools differ
        if key == "response_format":
            if token in ("text", "json_object"):
                return {"type": token}
            if token == "json_schema":
                schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
                return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
        if key == "stream_options":
            return {"include_usage": token == "usage"}
        if key in ("user", "safety_identifier", "prompt_cache_key") and token == "set":
            return f"user-{rng.getrandbits(48):012x}"
        try:
            value = json.loads(token)  # booleans, null, small integers, neutral values
        except ValueError:
            raise Uncomposable(f"{key} {token}") from None
        return value


def _expand(roles: str) -> str:
    """The letters of a role sequence (a long one, `ab+16+cd`: its ends, filled between
    with user and assistant turns up to the bucket's lower edge plus one)."""
    if "+" not in roles:
        return roles
    head, size, tail = roles.split("+")
    n = int(size) // 2 + 1
    middle = "".join("ua"[i % 2] for i in range(max(0, n - len(head) - len(tail))))
    return head + middle + tail


def _fit(text: str, target: int, more: Any) -> str:
    """`text` grown with more sentences, or cut, to exactly `target` characters."""
    while len(text) < target:
        text += " " + more()
    cut = text[:target]
    return cut[:-1] + "." if cut.endswith(" ") else cut


def _tool(name: str, description: str, params: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": params, "required": list(params)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


def _mention_json(body: dict[str, Any]) -> None:
    """OpenAI's clients must mention JSON when they ask for json_object: users do."""
    messages = body.get("messages") or []
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str) and len(m["content"]) > 12:
            m["content"] = m["content"][: -len(" JSON")] + " JSON"
            return
