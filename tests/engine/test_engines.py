"""One interface suite run against every engine (the tiny causal LM and MiniLM), plus
what only generation or only embeddings do."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from allmende.api.canonical import canonical, prompt_of
from allmende.api.protocol import InvalidParameter
from allmende.core import build_manifest
from allmende.core.prompts import max_prompt_tokens
from allmende.engine import Engine, EngineError, PromptTooLong, SamplingParams, collect, load_engine, resolve_model
from allmende.engine.base import EmbeddingInput
from allmende.engine.gguf import gguf_manifest
from allmende.engine.tiny import ensure_tiny_model

TINY_ID = "0x11419bb2d012e4d1be2e2b08c0a5bf7989eee37483da38f27e1c13a8d3e9ab13"
CHAT = {"messages": [{"role": "user", "content": "Wie geht es?"}]}


@pytest.fixture(scope="module")
def tiny() -> Engine:
    return load_engine("allmende:tiny")


@pytest.fixture(scope="module")
def minilm() -> Engine:
    return load_engine("minilm")


@pytest.fixture(params=["tiny", "minilm", "smollm2"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(request.param)


# ------------------------------------------------------------ the shared suite


def test_model_id_is_the_manifest_of_its_files(engine: Engine) -> None:
    resolved = resolve_model(engine.name)
    files = gguf_manifest(resolved.gguf) if resolved.gguf else build_manifest(engine.path)  # type: ignore[attr-defined]
    assert engine.model_id == files.model_id == resolved.model_id
    assert len(engine.model_id) == 32


def test_context_length_is_positive(engine: Engine) -> None:
    assert engine.context_length >= 128


def test_final_hidden_states_have_one_row_per_token(engine: Engine) -> None:
    hidden = engine.final_hidden_states([1, 2, 3, 4, 5])
    assert hidden.shape[0] == 5  # type: ignore[attr-defined]


def test_wrong_kind_is_a_typed_error(engine: Engine) -> None:
    with pytest.raises(EngineError):
        if engine.kind == "embed":
            engine.prompt_ids(prompt_of("chat", CHAT))
        else:
            asyncio.run(engine.embed(EmbeddingInput(("x",))))


TEXTS = [
    "Hallo",
    "Grüße aus Köln, ßäöü",
    "日本語のテキストと中文",
    "emoji 🙂🚀 and a tab\t and\nnewlines",
    "def f(x):\n    return x ** 2  # code",
    " leading spaces and   gaps ",
]


def test_honest_prompt_token_counts_stay_within_what_a_gateway_pays(engine: Engine) -> None:
    # core.prompts.max_prompt_tokens: a gateway pays no receipt above it, so honest counts must fit
    if engine.kind == "embed":
        _, tokens = asyncio.run(engine.embed(EmbeddingInput(tuple(TEXTS))))
        assert tokens <= max_prompt_tokens("embedding", {"input": TEXTS})
        return
    for text in TEXTS:
        for body in (
            {"messages": [{"role": "user", "content": text}]},
            {"messages": [{"role": "system", "content": text}, {"role": "user", "content": text}]},
        ):
            assert len(engine.prompt_ids(prompt_of("chat", body))) <= max_prompt_tokens("chat", body)
        completion = {"prompt": text}
        assert len(engine.prompt_ids(prompt_of("completion", completion))) <= max_prompt_tokens(
            "completion", completion
        )


# ------------------------------------------------------------------ generation


def test_tiny_model_id_is_the_same_on_every_machine() -> None:
    assert build_manifest(ensure_tiny_model()).model_id_hex == TINY_ID


def run(engine: Engine, params: SamplingParams, body: dict | None = None):
    ids = engine.prompt_ids(prompt_of("chat", body or CHAT))
    return asyncio.run(collect(engine.generate(ids, params), len(ids)))


def test_greedy_is_deterministic_and_respects_max_tokens(tiny: Engine) -> None:
    first = run(tiny, SamplingParams(max_tokens=16, temperature=0))
    second = run(tiny, SamplingParams(max_tokens=16, temperature=0))
    assert first.token_ids == second.token_ids
    assert first.completion_tokens <= 16
    assert first.finish_reason in ("length", "stop")


def test_same_seed_same_sample_other_seed_other_sample(tiny: Engine) -> None:
    a = run(tiny, SamplingParams(max_tokens=24, temperature=1.0, seed=7))
    b = run(tiny, SamplingParams(max_tokens=24, temperature=1.0, seed=7))
    c = run(tiny, SamplingParams(max_tokens=24, temperature=1.0, seed=8))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_top_p_limits_the_choices(tiny: Engine) -> None:
    narrow = {
        run(tiny, SamplingParams(max_tokens=1, temperature=1.0, top_p=1e-6, seed=s)).token_ids[0] for s in range(5)
    }
    assert len(narrow) == 1  # only the most likely token survives


def test_stop_sequence_ends_generation(tiny: Engine) -> None:
    free = run(tiny, SamplingParams(max_tokens=40, temperature=0))
    stop = free.text[5:7]
    stopped = run(tiny, SamplingParams(max_tokens=40, temperature=0, stop=(stop,)))
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text and free.text.startswith(stopped.text)


def test_prompt_too_long(tiny: Engine) -> None:
    with pytest.raises(PromptTooLong, match="context length"):
        run(tiny, SamplingParams(max_tokens=500), {"messages": [{"role": "user", "content": "y" * 100}]})


@pytest.mark.parametrize(
    "kwargs",
    [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": ("a",) * 5}],
    ids=["zero-tokens", "negative-temperature", "zero-top-p", "too-many-stops"],
)
def test_bad_sampling_parameters(kwargs: dict) -> None:
    with pytest.raises(EngineError):
        SamplingParams(**kwargs)


def test_generations_run_concurrently_without_blocking_the_loop(tiny: Engine) -> None:
    async def main() -> tuple[list[list[int]], list[int]]:
        ids = tiny.prompt_ids(prompt_of("chat", CHAT))
        ticks = 0
        seen: list[int] = []  # the ticker's count at each token of the first generation
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        async def watched() -> list[int]:
            out = []
            async for event in tiny.generate(ids, SamplingParams(max_tokens=64, temperature=0)):
                seen.append(ticks)
                if event.token_id is not None:
                    out.append(event.token_id)
            return out

        t = asyncio.create_task(ticker())
        others = [collect(tiny.generate(ids, SamplingParams(max_tokens=64, temperature=0)), len(ids)) for _ in range(3)]
        first, *rest = await asyncio.gather(watched(), *others)
        stop.set()
        await t
        return [first, *(r.token_ids for r in rest)], seen

    alone = run(tiny, SamplingParams(max_tokens=64, temperature=0)).token_ids
    outputs, seen = asyncio.run(main())
    assert outputs == [alone] * 4
    assert seen[-1] > seen[0]  # the event loop ran other work between the tokens of a generation


# ------------------------------------------------------------------ embeddings


def test_embeddings_are_normalised_and_meaningful(minilm: Engine) -> None:
    vectors, tokens = asyncio.run(
        minilm.embed(EmbeddingInput(("The cat sleeps.", "A cat is sleeping.", "Interest rates rose.")))
    )
    norms = [sum(x * x for x in v) for v in vectors]
    sim = [sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
    assert all(abs(n - 1) < 1e-5 for n in norms)
    assert sim[0] > sim[1] + 0.2
    assert tokens > 6


def test_embedding_input_validation(minilm: Engine) -> None:
    with pytest.raises(InvalidParameter, match="input"):
        canonical("embedding", {"input": [1, "two"]})
    with pytest.raises(EngineError, match="token ids") as info:
        asyncio.run(minilm.embed(EmbeddingInput(("fine", (10**9,)))))
    assert str(info.value).startswith("'input' item 1: ")  # the gateway's param: input
    assert "check_embedding_ctx_length=False" in str(info.value)  # langchain's tiktoken ids: the fix
    with pytest.raises(EngineError, match="inputs per request"):
        asyncio.run(minilm.embed(EmbeddingInput(())))
    with pytest.raises(EngineError, match="dimensions"):
        asyncio.run(minilm.embed(EmbeddingInput(("one",), dimensions=8)))
    assert canonical("embedding", {"input": "one"}).prompt == EmbeddingInput(("one",))
    assert canonical("embedding", {"input": [1, 2]}).prompt == EmbeddingInput(((1, 2),))


def test_2048_inputs_embed_in_batches_as_each_alone(minilm: Engine) -> None:
    texts = tuple(f"document {i}: " + "word " * (i % 37) for i in range(2048))  # as OpenAI allows
    assert canonical("embedding", {"input": list(texts)}).prompt == EmbeddingInput(texts)
    with pytest.raises(InvalidParameter, match="at most 2048"):
        canonical("embedding", {"input": [*texts, "one more"]})

    vectors, tokens = asyncio.run(minilm.embed(EmbeddingInput(texts)))

    assert len(vectors) == 2048 and tokens > 2048 * 4
    for i in (0, 1, 36, 2047):  # batched with others of another length, padded: the same vector as alone
        alone = asyncio.run(minilm.embed(EmbeddingInput((texts[i],))))[0][0]
        assert max(abs(a - b) for a, b in zip(vectors[i], alone, strict=True)) < 1e-4


def test_a_text_and_its_token_ids_embed_alike(minilm: Engine) -> None:
    text = "A cat is sleeping."
    ids = minilm.tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[attr-defined]

    vectors, _ = asyncio.run(minilm.embed(EmbeddingInput((text, tuple(ids), "Interest rates rose."))))

    assert max(abs(a - b) for a, b in zip(vectors[0], vectors[1], strict=True)) < 1e-5
    assert vectors[1] != vectors[2]


def test_dimensions_other_than_the_models_own_are_refused(minilm: Engine) -> None:
    vectors, _ = asyncio.run(minilm.embed(EmbeddingInput(("one",), dimensions=384)))
    assert len(vectors[0]) == 384
    with pytest.raises(EngineError, match=r"'dimensions'.*384.*Matryoshka"):
        asyncio.run(minilm.embed(EmbeddingInput(("one",), dimensions=64)))


def test_unknown_model_name_is_a_typed_error() -> None:
    from allmende.core import UnknownModel

    with pytest.raises(UnknownModel, match="no-such-model-xyz"):
        load_engine("no-such-org/no-such-model-xyz")


RESOLVE_ONLY = """
import sys
from allmende.engine import resolve_model
for name in ("allmende:tiny", "minilm", "smollm2-135m-instruct"):
    print(name, resolve_model(name, progress=False).is_embedding)
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""


def test_resolving_model_names_imports_neither_torch_nor_transformers() -> None:
    """`allmende up` resolves the names it starts providers with, and nothing else it does needs
    torch: resolving a name must not import it (2.7 s of CPU in every `up` when it did)."""
    shown = subprocess.run([sys.executable, "-c", RESOLVE_ONLY], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        "allmende:tiny False",
        "minilm True",
        "smollm2-135m-instruct False",
        "[]",
    ], shown.stdout


def test_streamed_text_adds_up_to_the_decoded_tokens(tiny: Engine) -> None:
    for seed in range(30):  # random bytes from the tiny model often form broken UTF-8: nothing may be lost
        gen = run(tiny, SamplingParams(max_tokens=40, temperature=1.0, seed=seed))
        decoded = tiny.decode(gen.token_ids)  # type: ignore[attr-defined]
        assert gen.text == decoded
