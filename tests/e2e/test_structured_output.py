"""Structured output that ends, through the network `allmende up` started (tests/e2e/conftest.py):
the official client's `chat.completions.parse` with a pydantic model of integer, number and
nested fields, on the default chat model (SmolLM2-135M-Instruct), without `max_tokens` (issue
32: `"population":1112200000…` ran to `max_tokens`; the default was 64 tokens)."""

from __future__ import annotations

import pydantic

from tests.e2e.conftest import Network

MODEL = "smollm2-135m-instruct"


class Location(pydantic.BaseModel):
    country: str
    lat: float
    lon: float


class City(pydantic.BaseModel):
    name: str
    population: int
    area_km2: float
    location: Location


def test_parse_with_integer_number_and_nested_fields_stops_by_itself(network: Network) -> None:
    completion = network.client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Tokyo as JSON."}],
        response_format=City,
        temperature=0,
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    city = choice.message.parsed
    assert isinstance(city, City) and isinstance(city.population, int)
    assert completion.usage is not None and completion.usage.completion_tokens < 200
    view = (completion.model_extra or {}).get("allmende") or {}
    assert view.get("signature") and str(view.get("provider", "")).startswith("0x")  # a provider's signed receipt
