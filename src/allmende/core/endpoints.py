"""The kinds of request the network serves, and what each one is: the one table every role
reads instead of comparing kind strings.

A request's `kind` travels in the sealed envelope to the provider, is bound by the receipt's
`inputHash` ({kind, request}) and names the row here. What differs between the kinds is
data, not code paths:

    kind        gateway path            prompt field  model kind  n choices
    chat        /v1/chat/completions    messages      generate    yes
    completion  /v1/completions         prompt        generate    yes
    embedding   /v1/embeddings          input         embed       no

(`/v1/responses` and `/v1/messages` are translated to `chat` at the gateway.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from allmende.core.errors import InvalidInput

ModelKind = Literal["generate", "embed"]
RequestKind = Literal["chat", "completion", "embedding"]  # a row of ENDPOINTS, as a type
# how errors name a model of each kind
MODEL_KIND_NAMES: dict[str, str] = {"generate": "a text generation model", "embed": "an embedding model"}


@dataclass(frozen=True)
class Endpoint:
    kind: str
    path: str  # where the gateway serves it (OpenAI's path)
    prompt_field: str  # the body field that holds the prompt or the inputs
    model_kind: ModelKind  # what a model must be to serve it (an offer's, an engine's kind)
    prompt_name: str  # how errors name the prompt

    @property
    def generates(self) -> bool:
        """Whether it samples tokens (and so has max_tokens, n, stop, a completion to bill)."""
        return self.model_kind == "generate"

    @property
    def chat(self) -> bool:
        """Whether its prompt is a list of messages rendered by the model's chat template."""
        return self.prompt_field == "messages"


CHAT = Endpoint("chat", "/v1/chat/completions", "messages", "generate", "the prompt")
COMPLETION = Endpoint("completion", "/v1/completions", "prompt", "generate", "the prompt")
EMBEDDING = Endpoint("embedding", "/v1/embeddings", "input", "embed", "an input")
ENDPOINTS: dict[str, Endpoint] = {e.kind: e for e in (CHAT, COMPLETION, EMBEDDING)}
KINDS = tuple(ENDPOINTS)


def endpoint(kind: object) -> Endpoint:
    """The endpoint of a request kind; InvalidInput names the kinds there are."""
    found = ENDPOINTS.get(kind) if isinstance(kind, str) else None
    if found is None:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}")
    return found


def request_kind(kind: object) -> RequestKind:
    """`kind` as the type engines and the canonical request take; InvalidInput names the kinds there are."""
    return cast(RequestKind, endpoint(kind).kind)
