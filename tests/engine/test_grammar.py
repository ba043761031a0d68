"""Structured output on allmende:tiny: the grammar from `response_format` constrains every
draw, the output is valid JSON of the schema, and the checker applies the same masks, so a
provider that ignores the grammar is caught."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import llguidance
import pytest

from allmende.api.canonical import prompt_of
from allmende.api.protocol import InvalidParameter, check_request, sampling_params
from allmende.api.schemas import MAX_JSON_ITEMS, MAX_JSON_STRING
from allmende.engine import EngineError, SamplingParams, collect, load_engine
from allmende.engine.transformers_lm import CausalLMEngine
from allmende.validator.checker import judge

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green"]}},
    "required": ["ok", "colour"],
    "additionalProperties": False,
}
BODY = {
    "messages": [{"role": "user", "content": "Answer in JSON."}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}},
    "max_tokens": 40,
    "temperature": 0.8,
    "seed": 9,
}


@pytest.fixture(scope="module")
def tiny() -> CausalLMEngine:
    engine = load_engine("allmende:tiny")
    assert isinstance(engine, CausalLMEngine)
    return engine


def generate(engine: CausalLMEngine, params: SamplingParams) -> tuple[list[int], list[int], str, str]:
    ids = engine.prompt_ids(prompt_of("chat", BODY))
    gen = asyncio.run(collect(engine.generate(ids, params), len(ids)))
    return ids, gen.token_ids, gen.text, gen.finish_reason


@pytest.mark.parametrize("seed", [9, 10, 11])
def test_structured_output_is_valid_json_of_the_schema_and_passes_the_checker(tiny: CausalLMEngine, seed: int) -> None:
    params = sampling_params({**BODY, "seed": seed})
    assert params.grammar is not None

    prompt, output, text, finish = generate(tiny, params)

    assert finish == "stop"
    value = json.loads(text)
    assert set(value) == {"ok", "colour"} and isinstance(value["ok"], bool) and value["colour"] in ("red", "green")
    assert judge(tiny, prompt, output, b"", params).bad_tokens == 0


def test_a_provider_that_ignores_the_grammar_fails_the_draw_check(tiny: CausalLMEngine) -> None:
    params = sampling_params(BODY)
    prompt, output, _, _ = generate(tiny, dataclasses.replace(params, grammar=None))  # the unconstrained draw

    verdict = judge(tiny, prompt, output, b"", params)  # checked as the request asked: under the grammar

    assert not verdict.ok and verdict.bad_tokens > 0


def test_json_object_and_bad_formats(tiny: CausalLMEngine) -> None:
    params = sampling_params({**BODY, "response_format": {"type": "json_object"}})
    _, _, text, finish = generate(tiny, params)
    assert finish == "length" or isinstance(json.loads(text), dict)
    for bad in ({"type": "yaml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"schema": 3}}):
        with pytest.raises(InvalidParameter) as info:
            check_request("chat", {**BODY, "response_format": bad})
        assert info.value.param == "response_format"
    with pytest.raises(EngineError, match="response_format"):
        tiny.constraint(dataclasses.replace(params, grammar="not a grammar {"))


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Berlin"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS_BODY = {
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,  # a random tiny model would add calls up to max_tokens
    "max_tokens": 80,
    "temperature": 0.8,
    "seed": 9,
}


def generate_tools(engine: CausalLMEngine, body: dict, params: SamplingParams) -> tuple[list[int], list[int], str]:
    ids = engine.prompt_ids(prompt_of("chat", body))
    gen = asyncio.run(collect(engine.generate(ids, params), len(ids)))
    return ids, gen.token_ids, gen.text


@pytest.mark.parametrize("choice", ["named", "required", "auto"])
def test_tool_calls_follow_their_grammar_and_pass_the_checker(tiny: CausalLMEngine, choice: str) -> None:
    body = dict(TOOLS_BODY)
    if choice != "named":
        body["tool_choice"] = choice
    params = sampling_params(body)

    prompt, output, text = generate_tools(tiny, body, params)

    assert judge(tiny, prompt, output, b"", params).bad_tokens == 0  # no false alarm under the tool grammar
    if choice != "auto" or text.startswith("["):
        calls = json.loads(text)
        assert calls and all(
            c["name"] == "get_weather" and c["arguments"]["city"] in ("Paris", "Berlin") for c in calls
        )


def test_a_provider_that_ignores_the_tool_grammar_fails_the_draw_check(tiny: CausalLMEngine) -> None:
    params = sampling_params(TOOLS_BODY)
    assert params.grammar is not None
    prompt, output, _ = generate_tools(tiny, TOOLS_BODY, dataclasses.replace(params, grammar=None))  # free text

    verdict = judge(tiny, prompt, output, b"", params)  # checked as the request asked: a forced call

    assert not verdict.ok and verdict.bad_tokens > 0


def test_a_chat_template_that_renders_tools_gets_them_and_the_history_natively(tiny: CausalLMEngine) -> None:
    template = (
        "{% if tools %}TOOLS {{ tools | tojson }}\n{% endif %}{% for m in messages %}{{ m.role }}: "
        "{% if m.tool_calls %}CALLS {{ m.tool_calls | tojson }}{% else %}{{ m.content }}{% endif %}\n{% endfor %}"
    )
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    body = {
        **TOOLS_BODY,
        "messages": [
            *TOOLS_BODY["messages"],  # type: ignore[list-item]
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    }
    original = tiny.tokenizer.chat_template
    tiny.tokenizer.chat_template = template
    try:
        text = tiny.decode(tiny.prompt_ids(prompt_of("chat", body)))
    finally:
        tiny.tokenizer.chat_template = original

    assert text.startswith('TOOLS [{"type": "function", "function": {"name": "get_weather"')
    assert 'assistant: CALLS [{"id": "call_1", "type": "function", "function": {"name": "get_weather", ' in text
    assert '"arguments": {"city": "Paris"}' in text and "tool: sunny" in text


# --- grammars that end (allmende.api.schemas) ---------------------------------------------


def accepts(engine: CausalLMEngine, body: dict, text: str) -> bool:
    """Whether the grammar of `body` accepts `text` as a whole completion."""
    grammar = sampling_params(body).grammar
    assert grammar is not None
    matcher = llguidance.LLMatcher(engine.grammar_tokenizer, grammar, log_level=0)
    matcher.consume_tokens(engine.grammar_tokenizer.tokenize_str(text))
    return not matcher.is_error() and matcher.is_accepting()


def schema_body(schema: dict) -> dict:
    return {**BODY, "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}


CITY = {
    "type": "object",
    "properties": {
        "population": {"type": "integer"},
        "area": {"type": "number"},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
    },
    "required": ["population", "area", "where"],
}


def test_integers_and_numbers_have_a_bounded_length(tiny: CausalLMEngine) -> None:
    body = schema_body(CITY)
    assert accepts(tiny, body, '{"population":9007199254740991,"area":-12.5,"where":{"lat":48.856613}}')
    assert not accepts(tiny, body, '{"population":90071992547409911')  # the 17th digit is not allowed
    assert not accepts(tiny, body, '{"population":1,"area":1.1234567')  # the 7th decimal is not allowed
    assert not accepts(tiny, body, '{"population":1,"area":1e300')  # no exponent
    own = schema_body({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}}})
    assert accepts(tiny, own, '{"n":99}') and not accepts(tiny, own, '{"n":100}')  # the schema's own bounds hold


def test_structured_output_schemas_are_closed_unless_they_say_otherwise(tiny: CausalLMEngine) -> None:
    assert not accepts(tiny, schema_body(CITY), '{"population":1,"area":2,"where":{"lat":3},"mayor":"x"}')
    assert not accepts(tiny, schema_body(CITY), '{"population":1,"area":2,"where":{"lat":3,"lon":4}}')  # nested too
    open_schema = {**CITY, "additionalProperties": True}
    assert accepts(tiny, schema_body(open_schema), '{"population":1,"area":2,"where":{"lat":3},"mayor":"x"}')


def test_json_object_nests_a_bounded_depth_with_bounded_containers_and_strings(tiny: CausalLMEngine) -> None:
    body = {**BODY, "response_format": {"type": "json_object"}}
    assert accepts(tiny, body, '{"a":{"b":{"c":{"d":{"e":1}}}},"f":[1,"x",null,true]}')  # 5 levels
    assert not accepts(tiny, body, '{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}')  # 6 levels
    assert not accepts(tiny, body, '{"a":[[[[[1]]]]]}')
    assert accepts(tiny, body, '{"a":"' + "x" * MAX_JSON_STRING + '"}')
    assert not accepts(tiny, body, '{"a":"' + "x" * (MAX_JSON_STRING + 1) + '"}')
    items = ",".join(str(i) for i in range(MAX_JSON_ITEMS))
    assert accepts(tiny, body, '{"a":[' + items + "]}") and not accepts(tiny, body, '{"a":[' + items + ",0]}")
    keys = ",".join(f'"k{i}":0' for i in range(MAX_JSON_ITEMS + 1))
    assert not accepts(tiny, body, "{" + keys + "}")


def test_json_object_on_the_tiny_model_ends_and_passes_the_checker(tiny: CausalLMEngine) -> None:
    params = sampling_params({**BODY, "response_format": {"type": "json_object"}, "temperature": 0, "max_tokens": 300})
    prompt, output, text, finish = generate(tiny, params)
    assert finish == "stop" and isinstance(json.loads(text), dict)
    assert judge(tiny, prompt, output, b"", params).bad_tokens == 0
