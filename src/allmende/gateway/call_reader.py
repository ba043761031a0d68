"""Reading a tool call back out of generated text (allmende.api.tools has its wire format):
`CallReader` follows a call array as its text streams in and says what to send, `read_calls`
reads a whole answer."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field


@dataclass
class CallDelta:
    """One streamed piece of a call: its start (`name` set, with the id) or arguments text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class CallReader:
    """Reads a call array as its text arrives (compact or not) and says what to stream:
    a call's start once its name is known, then its arguments' characters as they come.
    The arguments are the exact characters of the JSON value the model wrote."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    index: int = -1
    role: str = ""  # "key" or "value" inside a call object
    key: str | None = None
    token: str = ""  # the string being read (a key or the name), with its quotes
    in_arguments: bool = False
    names: list[str | None] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    started: list[bool] = field(default_factory=list)
    broken: bool = False

    def feed(self, text: str) -> list[CallDelta]:
        before = [len(a) for a in self.arguments]
        was_started = list(self.started)
        for c in text:
            self._char(c)
        out = []
        for i, name in enumerate(self.names):
            if name is not None and not self.started[i]:
                self.started[i] = True
                self.ids.append(new_call_id())
                out.append(CallDelta(i, self.ids[i], name, ""))
            if self.started[i]:
                start = before[i] if i < len(before) and i < len(was_started) and was_started[i] else 0
                piece = self.arguments[i][start:]
                if piece:
                    out.append(CallDelta(i, arguments=piece))
        return out

    def _char(self, c: str) -> None:
        if self.in_arguments and self.depth == 2 and not self.in_string and c in ",}":
            self.in_arguments = False  # a scalar value ended (an object or array ends below)
        if self.in_arguments:
            self.arguments[self.index] += c
        if self.in_string:
            if not self.in_arguments:
                self.token += c
            if self.escaped:
                self.escaped = False
            elif c == "\\":
                self.escaped = True
            elif c == '"':
                self.in_string = False
                if not self.in_arguments and self.depth == 2:
                    self._string_done()
            return
        if c == '"':
            self.in_string, self.token = True, c
        elif c in "[{":
            self.depth += 1
            if self.in_arguments:
                return
            if c == "{" and self.depth == 2:  # a call starts
                self.index += 1
                self.names.append(None)
                self.arguments.append("")
                self.started.append(False)
                self.role, self.key = "key", None
            elif not (c == "[" and self.depth == 1 and self.index < 0):
                self.broken = True
        elif c in "]}":
            self.depth -= 1
            if self.in_arguments and self.depth == 2:
                self.in_arguments = False
        elif self.depth == 2 and not self.in_arguments:
            if c == ":":
                self.role = "value"
                self.in_arguments = self.key == "arguments"
            elif c == ",":
                self.role = "key"
            elif not c.isspace():
                self.broken = True

    def _string_done(self) -> None:
        try:
            value = json.loads(self.token)
        except ValueError:
            self.broken = True
            return
        if self.role == "key":
            self.key = value
        elif self.key == "name" and isinstance(value, str):
            self.names[self.index] = value

    def complete(self) -> bool:
        """True if the text so far is a whole call array with a name and arguments in every call."""
        return (
            not self.broken
            and self.depth == 0
            and not self.in_string
            and self.index >= 0
            and all(n is not None for n in self.names)
            and all(a for a in self.arguments)
        )


def read_calls(text: str) -> list[tuple[str, str, str]] | None:
    """(id, name, arguments) of each call in `text`, or None if it is not a whole call array
    (text, or a call cut off by `max_tokens`)."""
    if not text.lstrip().startswith("["):
        return None
    reader = CallReader()
    reader.feed(text)
    if not reader.complete():
        return None
    try:
        json.loads(text)  # the characters between the calls are JSON too
    except ValueError:
        return None
    return [(reader.ids[i], str(reader.names[i]), reader.arguments[i]) for i in range(reader.index + 1)]
